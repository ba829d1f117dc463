"""URLs for the enforcement tests."""

from django.contrib import admin
from django.urls import path

from . import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/items/", views.plain, name="items"),
    path("api/items/<int:pk>/", views.plain, name="item"),
    path("login/", views.login, name="login"),
    path("plain/", views.plain, name="plain"),
    path("own-header/", views.own_ratelimit_header, name="own-header"),
    path("health/", views.plain, name="health"),
    path("async/", views.async_plain, name="async-plain"),
    path("code/", views.code_limited, name="code"),
    path("named/", views.named, name="named"),
    path("annotate/", views.annotate_only, name="annotate"),
    path("async-code/", views.async_code, name="async-code"),
    path("costly/", views.costly, name="costly"),
    path("class/", views.ClassBased.as_view(), name="class"),
]
