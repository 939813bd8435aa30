from django.urls import path

from sessions.consumers import GatewayConsumer

websocket_urlpatterns = [path("ws/", GatewayConsumer.as_asgi())]
