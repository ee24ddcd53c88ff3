from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from chanlite import Status
from chanlite.django.checks import layer_health


def index(request: HttpRequest) -> HttpResponse:
    return render(request, "chat/index.html")


def room(request: HttpRequest, room_name: str) -> HttpResponse:
    return render(request, "chat/room.html", {"room_name": room_name})


def health(request: HttpRequest) -> JsonResponse:
    """The channel layer's health (chanlite.health) as JSON, for a load
    balancer or an uptime check: 200 when ok or warning (the server can serve;
    look at it), 503 on an error (take it out of rotation)."""
    report = layer_health()
    status = 503 if report.status is Status.ERROR else 200
    return JsonResponse(report.to_dict(), status=status)
