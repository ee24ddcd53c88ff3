from chat.views import health
from django.urls import include, path

urlpatterns = [
    path("health/", health, name="health"),  # before chat.urls, whose <room_name>/ takes any
    path("chat/", include("chat.urls")),
    path("", include("chat.urls")),
]
