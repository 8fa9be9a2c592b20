"""odontogram_entries: the append-only chart log, guarded by a trigger

Revision ID: odontogram_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "odontogram_0001"
down_revision = None
branch_labels = None
depends_on = None
dentalpin_requires = {"patients": "patients_0001", "catalog": "catalog_0001"}

KINDS = ("condition", "treatment", "void")
SOURCES = ("manual", "treatment_plan")


def _one_of(column: str, values: tuple[str, ...]) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{v}'" for v in values)
    return sa.CheckConstraint(
        f"{column} in ({allowed})", name=f"ck_odontogram_entries_{column}_valid"
    )


APPEND_ONLY = """
create function odontogram_entries_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'odontogram entries are append-only (% refused)', tg_op
        using errcode = 'restrict_violation',
              hint = 'record a new entry that supersedes the wrong one';
end
$$
"""
SAME_PATIENT = """
create function odontogram_entries_same_patient() returns trigger language plpgsql as $$
begin
    if new.supersedes_id is not null and not exists (
        select 1 from odontogram_entries
        where id = new.supersedes_id and patient_id = new.patient_id
    ) then
        raise exception 'entry % belongs to another patient', new.supersedes_id
            using errcode = 'foreign_key_violation',
                  hint = 'a correction supersedes an entry of the same patient';
    end if;
    return new;
end
$$
"""


def upgrade() -> None:
    op.create_table(
        "odontogram_entries",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("seq", sa.BigInteger, sa.Identity(start=1), nullable=False),
        sa.Column("patient_id", sa.UUID(), nullable=False),
        sa.Column("kind", sa.Text, nullable=False, server_default="condition"),
        sa.Column("tooth", sa.SmallInteger, nullable=False),
        sa.Column("surfaces", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("condition", sa.Text),
        sa.Column("catalog_item_id", sa.UUID()),
        sa.Column("supersedes_id", sa.UUID()),
        sa.Column("notes", sa.Text),
        sa.Column("source", sa.Text, nullable=False, server_default="manual"),
        sa.Column("source_ref", sa.UUID()),
        sa.Column(
            "occurred_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column(
            "recorded_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("recorded_by", sa.UUID()),
        sa.PrimaryKeyConstraint("id", name="pk_odontogram_entries"),
        sa.UniqueConstraint("seq", name="uq_odontogram_entries_seq"),
        _one_of("kind", KINDS),
        _one_of("source", SOURCES),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients_patients.id"],
            name="fk_odontogram_entries_patient_id_patients_patients",
        ),
        sa.ForeignKeyConstraint(
            ["catalog_item_id"],
            ["catalog_items.id"],
            name="fk_odontogram_entries_catalog_item_id_catalog_items",
        ),
        sa.ForeignKeyConstraint(
            ["supersedes_id"],
            ["odontogram_entries.id"],
            name="fk_odontogram_entries_supersedes_id_odontogram_entries",
        ),
    )
    op.create_index(
        "ix_odontogram_entries_patient_id_seq", "odontogram_entries", ["patient_id", "seq"]
    )
    op.create_index(
        "uq_odontogram_entries_supersedes_id",
        "odontogram_entries",
        ["supersedes_id"],
        unique=True,
        postgresql_where=sa.text("supersedes_id is not null"),
    )
    op.execute(APPEND_ONLY)
    op.execute(
        "create trigger odontogram_entries_no_change before update or delete "
        "on odontogram_entries for each row execute function odontogram_entries_append_only()"
    )
    op.execute(SAME_PATIENT)
    op.execute(
        "create trigger odontogram_entries_supersede_own before insert on odontogram_entries "
        "for each row when (new.supersedes_id is not null) "
        "execute function odontogram_entries_same_patient()"
    )
    op.execute(
        "create trigger odontogram_entries_no_truncate before truncate "
        "on odontogram_entries for each statement "
        "execute function odontogram_entries_append_only()"
    )


def downgrade() -> None:
    op.drop_table("odontogram_entries")  # its triggers go with it
    op.execute("drop function odontogram_entries_append_only()")
    op.execute("drop function odontogram_entries_same_patient()")
