from django.urls import path

from . import views

urlpatterns = [
    path("visible", views.visible),
    path("visible-atomic", views.visible_atomic),
    path("visible-mirror", views.visible_mirror),
    path("visible-async", views.visible_async),
    path("create", views.create),
]
