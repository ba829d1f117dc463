"""Demo URLs."""

from django.contrib import admin
from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("token", views.token, name="token"),
    path("leaky", views.leaky, name="leaky"),
    path("api/hello", views.hello, name="api-hello"),
    path("login", views.login, name="demo-login"),
    path("demo-service/hello", views.service_hello, name="demo-service-hello"),
    path("admin/", admin.site.urls),
]
