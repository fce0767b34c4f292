"""The HTTP API (FastAPI): OpenAI's Files and Batches endpoints under /v1, what the `openai` client calls.

    POST   /v1/files                   upload (multipart: file, purpose=batch)
    GET    /v1/files, /v1/files/{id}   list, retrieve;  DELETE /v1/files/{id};  GET /v1/files/{id}/content
    POST   /v1/batches                 create;  GET /v1/batches, /v1/batches/{id};  POST .../{id}/cancel
    GET    /v1/models, /v1/models/{name}   the model names batches may use

Every route needs a key (`Authorization: Bearer KEY`); errors come in OpenAI's shape. Request bodies
are bounded before they are read (`BodyLimit`): an upload by the file limit, anything else by 1 MiB.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException

from jobs.openai_batch.server.auth import Keys, Principal
from jobs.openai_batch.server.batches import Batches, CreateBatch
from jobs.openai_batch.server.errors import APIError, not_found, unauthorized
from jobs.openai_batch.server.files import Files
from jobs.openai_batch.server.limits import BodyLimit
from jobs.openai_batch.server.models import Models

MULTIPART_SLACK = 64 * 1024  # the form's boundaries and headers around the file


def create_app(keys: Keys, files: Files, batches: Batches, models: Models, loop=None) -> FastAPI:
    """The API over `files` and `batches`; `loop` (an advance.Loop) runs while the app serves."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if loop is not None:
            loop.start()
        yield
        if loop is not None:
            loop.stop()

    app = FastAPI(title="runner serve: OpenAI Batch API", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(
        BodyLimit, upload_path="/v1/files", upload_bytes=files.limits.max_file_bytes + MULTIPART_SLACK
    )
    _errors(app)
    wake = loop.wake if loop is not None else (lambda: None)

    def principal(request: Request) -> Principal:
        who = keys.authenticate(request.headers.get("authorization"))
        if who is None:
            raise unauthorized()
        return who

    @app.post("/v1/files")
    def upload(file: UploadFile = File(...), purpose: str = Form(...), who: Principal = Depends(principal)):
        return files.upload(who, file.file, file.filename or "", purpose)

    @app.get("/v1/files")
    def list_files(
        purpose: str | None = None, order: str = "desc", after: str | None = None, limit: int = 10_000,
        who: Principal = Depends(principal),
    ):  # fmt: skip
        return files.list(who, purpose, order, after, limit)

    @app.get("/v1/files/{file_id}")
    def get_file(file_id: str, who: Principal = Depends(principal)):
        return files.get(who, file_id)

    @app.delete("/v1/files/{file_id}")
    def delete_file(file_id: str, who: Principal = Depends(principal)):
        return files.delete(who, file_id)

    @app.get("/v1/files/{file_id}/content")
    def file_content(file_id: str, who: Principal = Depends(principal)):
        return StreamingResponse(files.content(who, file_id), media_type="application/jsonl")

    @app.post("/v1/batches")
    def create_batch(body: CreateBatch, who: Principal = Depends(principal)):
        batch = batches.create(who, body)
        wake()
        return batch

    @app.get("/v1/batches")
    def list_batches(after: str | None = None, limit: int = 20, who: Principal = Depends(principal)):
        return batches.list(who, after, limit)

    @app.get("/v1/batches/{batch_id}")
    def get_batch(batch_id: str, who: Principal = Depends(principal)):
        return batches.get(who, batch_id)

    @app.post("/v1/batches/{batch_id}/cancel")
    def cancel_batch(batch_id: str, who: Principal = Depends(principal)):
        batch = batches.cancel(who, batch_id)
        wake()
        return batch

    def model_object(name: str) -> dict:
        return {"id": name, "object": "model", "created": 0, "owned_by": "runner"}

    @app.get("/v1/models")
    def list_models(who: Principal = Depends(principal)):
        return {"object": "list", "data": [model_object(name) for name in models.names()]}

    @app.get("/v1/models/{name:path}")  # names hold slashes (org/model)
    def get_model(name: str, who: Principal = Depends(principal)):
        if models.find(name) is None:
            raise not_found("Model", name)
        return model_object(name)

    return app


def _errors(app: FastAPI) -> None:
    """Every refusal in OpenAI's error shape, including FastAPI's own (bad body, unknown route)."""

    @app.exception_handler(APIError)
    async def api_error(_request: Request, err: APIError):
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return APIError(
            400, f"{where or 'request'}: {first.get('msg', 'invalid request')}", param=where
        ).response()

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, err: HTTPException):
        return APIError(err.status_code, str(err.detail), code=getattr(err, "code", None)).response()
