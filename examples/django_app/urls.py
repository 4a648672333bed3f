"""URLs of the Django example: sync and async variants of login and update."""

from audit_mw_examples.django_app.orders import views
from django.urls import path

urlpatterns = [
    path("login", views.login_view),
    path("alogin", views.alogin_view),
    path("orders/<int:order_id>", views.update_order),
    path("aorders/<int:order_id>", views.aupdate_order),
]
