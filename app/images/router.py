"""``/api/v1/images``: named test image sets (the built-in set is called ``builtin``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile, status

from app.api import errors
from app.auth import AuthFirst, CurrentUser, SessionDep, require_role
from app.deps import SettingsDep, StoreDep
from app.images import repository, service
from app.images.schemas import ImageSetOut
from app.orm import User
from app.pagination import HEADERS, Paged

router = APIRouter(prefix="/api/v1/images", tags=["images"], route_class=AuthFirst)
Submitter = Annotated[User, Depends(require_role("submitter", "admin"))]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=errors(400, 401, 403, 409, 413, 422, 429, 503),
)
def upload_images(
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    user: Submitter,
    name: Annotated[str, Form()],
    files: Annotated[
        list[UploadFile],
        File(description="PNG, TIFF, NPY, DICOM, NIfTI, or fastMRI HDF5 k-space (.h5)"),
    ],
    slices: Annotated[
        str | None,
        Form(
            description="Which slices of every volume or HDF5 file: 'all', or indices and "
            "half-open ranges ('3', '2:6', '0,4,8:10'); default: the middle slice."
        ),
    ] = None,
) -> ImageSetOut:
    image_set = service.upload_image_set(
        session, store, settings, user, name, [(f.filename or "", f.file) for f in files], slices
    )
    return ImageSetOut.model_validate(image_set)


@router.get("", responses={200: {"headers": HEADERS}, **errors(401, 422)})
def list_image_sets(
    session: SessionDep,
    user: CurrentUser,
    pages: Paged,
) -> list[ImageSetOut]:
    """The image sets the caller may see, a page at a time: the uploaded ones, newest first,
    ``limit`` a page; the first page also starts with the built-in set."""
    sets = pages.rows(session, repository.listing(user), repository.ORDER)
    builtin = ImageSetOut(
        id=service.BUILTIN_SET,
        name=service.BUILTIN_SET,
        images=[{"name": "phantoms and bundled DICOMs (reconstruction.data.builtin_images)"}],
        owner_id=None,
        created_at=None,
    )
    return [builtin] * pages.first + [ImageSetOut.model_validate(s) for s in sets]
