"""REST errors shared by every app's API."""

from rest_framework import status
from rest_framework.exceptions import APIException


class Conflict(APIException):
    """The request is valid, but the object's current state does not allow it (409)."""

    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"
