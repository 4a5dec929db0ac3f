from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class ApprovalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(
        min_length=1,
        max_length=200,
        description="Your own API token, entered again to sign (step-up, 21 CFR 11.200).",
    )
    comment: str = Field("", max_length=2000, description="Printed in the signature's box.")


class Approver(BaseModel):
    id: str
    name: str
    role: str


class ApprovalOut(BaseModel):
    audit_id: str
    meaning: str
    approver: Approver
    comment: str
    #: the approved PDF (now served as the report) and the issued one it was added to
    pdf_sha256: str
    previous_pdf_sha256: str
    created_at: AwareDatetime


class SignatureOut(BaseModel):
    field: str
    signer: str = Field(description="The printed name: the signature's /Name.")
    signed_with: str = Field(description="The signing certificate's subject.")
    meaning: str | None = Field(description="The signature's /Reason: issued, approved.")
    time: str | None = Field(description="Signing time, UTC (ISO 8601).")
    timestamp: str | None
    timestamp_trusted: bool | None
    intact: bool = Field(description="The signed bytes are unchanged and the signature verifies.")
    trusted: bool = Field(description="The signer chains to the service's CA.")
    pades: bool
    certification: bool
    revision: int
    coverage: str = Field(description="'entire file' or 'revision N of M'.")
    modified_after: str | None
    ok: bool
    problems: list[str]


class VerificationOut(BaseModel):
    valid: bool
    status: Literal["valid", "invalid", "unknown"]
    reason: str | None
    sha256: str
    revisions: int
    signatures: list[SignatureOut]
    certificate: dict[str, Any] | None
    attachments: dict[str, str]
    database: dict[str, Any]
