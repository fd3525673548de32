"""The collection routes: create a collection, list and read them, add items."""

from __future__ import annotations

import itertools
import re
import threading

from .messages import HubError, RecordedRequest, Response, json_response, require_token
from .storage import now


class Collections:
    """The collections of `HubServer`, kept as the API answers them."""

    _lock: threading.Lock
    _sequence: itertools.count
    _collections: dict[str, dict]  # slug -> the collection as the API answers it

    def collection(self, namespace: str, title: str) -> dict | None:
        """The collection of that title in that namespace, as the API answers it (None if there is none)."""
        found = [c for c in self._collections.values() if c["owner"]["name"] == namespace and c["title"] == title]
        return found[0] if found else None

    def _collection_route(self, request: RecordedRequest) -> Response:
        """POST /api/collections, GET /api/collections/{slug}, POST /api/collections/{slug}/items: 409 for a title
        the namespace already has (with its slug, which `exists_ok` reads) and for an item already in it."""
        parts = request.path.removeprefix("/api/collections").strip("/")
        with self._lock:
            if request.method == "POST" and not parts:
                return self._create_collection(request)
            if request.method == "GET" and not parts:
                return self._list_collections(request)
            slug, _, action = parts.partition("/items") if parts.endswith("/items") else (parts, "", "")
            collection = self._collections.get(slug)
            if collection is None:
                raise HubError(404, f"Collection {slug} not found")
            if request.method == "GET" and not action:
                return json_response(collection)
            if request.method == "POST" and parts.endswith("/items"):
                return self._add_item(request, collection)
        raise HubError(404, f"No route for {request.method} {request.path}")

    def _create_collection(self, request: RecordedRequest) -> Response:
        require_token(request)
        payload = request.json()
        namespace, title = payload["namespace"], payload["title"]
        for slug, collection in self._collections.items():
            if collection["owner"]["name"] == namespace and collection["title"] == title:
                return json_response({"error": "Collection already exists", "slug": slug}, 409)
        slug = f"{namespace}/{re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')}-{next(self._sequence):024x}"
        self._collections[slug] = {
            "slug": slug,
            "title": title,
            "description": payload.get("description"),
            "owner": {"name": namespace, "type": "org"},
            "items": [],
            "lastUpdated": now(),
            "position": 0,
            "private": bool(payload.get("private")),
            "theme": "indigo",
            "upvotes": 0,
        }
        request.mutated = True
        return json_response(self._collections[slug])

    def _list_collections(self, request: RecordedRequest) -> Response:
        owner = (request.query.get("owner") or [None])[0]
        listed = [c for c in self._collections.values() if owner in (None, c["owner"]["name"])]
        # Like the Hub: a preview of the items, and no position (the client numbers the listing itself).
        return json_response(
            [{k: v for k, v in c.items() if k != "position"} | {"items": c["items"][:4]} for c in listed]
        )

    def _add_item(self, request: RecordedRequest, collection: dict) -> Response:
        require_token(request)
        item = request.json()["item"]
        if any(i["id"] == item["id"] and i["type"] == item["type"] for i in collection["items"]):
            return json_response({"error": "Item already in the collection"}, 409)
        entry = {"_id": f"{next(self._sequence):024x}", "position": len(collection["items"]), **item}
        collection["items"].append(entry)
        request.mutated = True
        return json_response(collection)
