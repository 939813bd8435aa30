"""/api/channels/: written out rather than routed, for the nested bindings and pairing paths. The URL names
follow the routers' (`<basename>-<action>`), which is what tenants/scopes.py keys scopes on."""

from django.urls import path, re_path

from channels_app.api import BindingViewSet, ChannelAccountViewSet, PairingViewSet

urlpatterns = [
    path("", ChannelAccountViewSet.as_view({"get": "list", "post": "create"}, detail=False), name="channel-list"),
    path(
        "<int:pk>/",
        ChannelAccountViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}, detail=True),
        name="channel-detail",
    ),
    path("<int:account_id>/pairing/", PairingViewSet.as_view({"get": "list"}, detail=False), name="channel-pairing-list"),
    # The trailing slash is optional here: the endpoint is documented, and used from scripts, without it.
    re_path(
        r"^(?P<account_id>[0-9]+)/pairing/approve/?$",
        PairingViewSet.as_view({"post": "approve"}, detail=False),
        name="channel-pairing-approve",
    ),
    path(
        "<int:account_id>/bindings/",
        BindingViewSet.as_view({"get": "list", "post": "create"}, detail=False),
        name="channel-binding-list",
    ),
    path(
        "<int:account_id>/bindings/<int:pk>/",
        BindingViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}, detail=True),
        name="channel-binding-detail",
    ),
]
