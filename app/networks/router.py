"""``/api/v1/models``: upload (multipart), list, get."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Response, UploadFile, status

from app.api import errors
from app.auth import AuthFirst, CurrentUser, SessionDep, require_role
from app.deps import SettingsDep, StoreDep
from app.errors import NotFound
from app.inspections import inspection_slot
from app.networks import repository, service
from app.networks.schemas import NetworkOut, NetworkSummary
from app.orm import User
from app.pagination import HEADERS, Paged

router = APIRouter(prefix="/api/v1/models", tags=["models"], route_class=AuthFirst)
Submitter = Annotated[User, Depends(require_role("submitter", "admin"))]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {
            "description": "the same bytes, manifest and files: the existing record",
            "model": NetworkOut,
        },
        **errors(400, 401, 403, 409, 413, 415, 422, 429, 503),
    },
)
def upload_model(
    response: Response,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    user: Submitter,
    model: Annotated[UploadFile, File(description="ONNX, torch.export .pt2 or TorchScript")],
    manifest: Annotated[UploadFile, File(description="the manifest (JSON or YAML)")],
    files: Annotated[
        list[UploadFile] | None, File(description="files the manifest references")
    ] = None,
) -> NetworkOut:
    """Upload a network with its manifest and referenced files (mask, external data); each
    user's uploads are checked one at a time (429 while another is), a few at once on the host
    (503 while they all are)."""
    with inspection_slot(settings, user.id):
        network, created = service.upload_network(
            session,
            store,
            settings,
            user,
            (model.filename or "", model.file),
            (manifest.filename or "", manifest.file),
            [(f.filename or "", f.file) for f in files or []],
        )
    if not created:
        response.status_code = status.HTTP_200_OK
    return NetworkOut.model_validate(network)


@router.get("", responses={200: {"headers": HEADERS}, **errors(401, 422)})
def list_models(
    session: SessionDep,
    user: CurrentUser,
    pages: Paged,
) -> list[NetworkSummary]:
    """The models the caller may see, newest first, a page at a time (without their manifests:
    ``GET /models/{id}`` has the whole record)."""
    networks = pages.rows(session, repository.listing(user), repository.ORDER)
    return [NetworkSummary.model_validate(n) for n in networks]


@router.get("/{model_id}", responses=errors(401, 404))
def get_model(model_id: str, session: SessionDep, user: CurrentUser) -> NetworkOut:
    network = repository.visible(session, user, model_id)
    if network is None:
        raise NotFound(f"no model {model_id}")
    return NetworkOut.model_validate(network)
