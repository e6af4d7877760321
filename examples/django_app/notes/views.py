import json
import os

from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from .models import Note


@require_GET
def health(request):
    return JsonResponse({"status": "ok"})


@require_GET
def pid(request):
    return HttpResponse(str(os.getpid()), content_type="text/plain")


def _text_from_request(request):
    """Read ``text`` from a JSON body or from form data."""
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            return None
        text = data.get("text") if isinstance(data, dict) else None
    else:
        text = request.POST.get("text")
    if not isinstance(text, str) or not text.strip():
        return None
    return text


@csrf_exempt
@require_http_methods(["GET", "POST"])
def notes(request):
    if request.method == "POST":
        text = _text_from_request(request)
        if text is None:
            return JsonResponse({"error": "missing 'text'"}, status=400)
        if len(text) > 200:
            return JsonResponse({"error": "'text' is longer than 200 characters"}, status=400)
        note = Note.objects.create(text=text)
        return JsonResponse({"id": note.id, "text": note.text, "pid": os.getpid()}, status=201)

    items = [{"id": n.id, "text": n.text} for n in Note.objects.all()]
    return JsonResponse({"notes": items, "count": len(items)})
