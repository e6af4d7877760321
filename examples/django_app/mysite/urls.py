from django.urls import path

from examples.django_app.notes import views

urlpatterns = [
    path("health", views.health),
    path("pid", views.pid),
    path("notes", views.notes),
]
