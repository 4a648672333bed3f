"""An audited table (orders) and a table the login view writes in its transaction."""

from django.db import models


class Order(models.Model):
    """An order (``orders_order``; track it with ``audit-mw track orders_order``)."""

    note = models.TextField(default="")


class LoginAttempt(models.Model):
    """Written by the login view inside the request's transaction, rolled back on failure."""

    username = models.TextField()
