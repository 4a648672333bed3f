"""Views written the usual way: Django's auth, sessions in the database, the ORM."""

import json

from audit_mw_examples.django_app.orders.models import LoginAttempt, Order
from django.contrib.auth import aauthenticate, alogin, authenticate, login
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods


@csrf_exempt
@require_http_methods(["POST"])
def login_view(request: HttpRequest) -> HttpResponse:
    body = json.loads(request.body)
    with transaction.atomic():
        # Written in the request's transaction, which a failure rolls back; the failed login
        # itself is recorded by audit_mw on its own connection (user_login_failed).
        LoginAttempt.objects.create(username=body["username"])
        user = authenticate(request, username=body["username"], password=body["password"])
        if user is None:
            transaction.set_rollback(True)
            return JsonResponse({"error": "bad credentials"}, status=401)
        login(request, user)
    return JsonResponse({"user_id": user.pk})


@csrf_exempt
@require_http_methods(["POST"])
async def alogin_view(request: HttpRequest) -> HttpResponse:
    body = json.loads(request.body)
    user = await aauthenticate(request, username=body["username"], password=body["password"])
    if user is None:
        return JsonResponse({"error": "bad credentials"}, status=401)
    await alogin(request, user)
    return JsonResponse({"user_id": user.pk})


@csrf_exempt
@require_http_methods(["PUT"])
def update_order(request: HttpRequest, order_id: int) -> HttpResponse:
    if not request.user.is_authenticated:
        return JsonResponse({"error": "not logged in"}, status=401)
    order = Order.objects.get(pk=order_id)
    order.note = json.loads(request.body)["note"]
    order.save(update_fields=["note"])
    return JsonResponse({"id": order.pk})


@csrf_exempt
@require_http_methods(["PUT"])
async def aupdate_order(request: HttpRequest, order_id: int) -> HttpResponse:
    user = await request.auser()
    if not user.is_authenticated:
        return JsonResponse({"error": "not logged in"}, status=401)
    order = await Order.objects.aget(pk=order_id)
    order.note = json.loads(request.body)["note"]
    await order.asave(update_fields=["note"])
    return JsonResponse({"id": order.pk})
