"""One route: the benchmarked view."""

from __future__ import annotations

from django.urls import path

from bench.http_site import PATH
from bench.http_site.views import contender_view

urlpatterns = [path(PATH.lstrip("/"), contender_view(), name="hello")]
