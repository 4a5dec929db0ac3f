"""``/api/v1/models``: upload (multipart), list, get."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Response, UploadFile, status

from app.auth import AuthFirst, CurrentUser, SessionDep, require_role
from app.deps import SettingsDep, StoreDep
from app.errors import NotFound
from app.networks import repository, service
from app.networks.schemas import NetworkOut
from app.orm import User

router = APIRouter(prefix="/api/v1/models", tags=["models"], route_class=AuthFirst)
Submitter = Annotated[User, Depends(require_role("submitter", "admin"))]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "the same bytes, manifest and files: the existing record"},
        401: {
            "description": "missing, unknown or revoked token, or a disabled user (before "
            "the body is read)"
        },
        403: {"description": "not a submitter or admin (before the body is read)"},
        409: {"description": "the same model bytes were uploaded with another manifest"},
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
    """Upload a network with its manifest and referenced files (mask, external data)."""
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


@router.get("")
def list_models(session: SessionDep, user: CurrentUser) -> list[NetworkOut]:
    return [NetworkOut.model_validate(n) for n in repository.listed(session, user)]


@router.get("/{model_id}")
def get_model(model_id: str, session: SessionDep, user: CurrentUser) -> NetworkOut:
    network = repository.visible(session, user, model_id)
    if network is None:
        raise NotFound(f"no model {model_id}")
    return NetworkOut.model_validate(network)
