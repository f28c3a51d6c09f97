"""The adapter registry: versions, aliases, stacks and deployments, in SQL.

Lives in the same database as the experience store. Adapter folders are copied
into ``<data_dir>/adapters/<skill>/v<N>`` when registered and never change
afterwards; rows are the source of truth for status, aliases and lineage.
History is append-only: a rollback is a new deployment pointing at an earlier
stack. This module needs no torch; validation and loading live in the runtime.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from agent_sleep.adapters.artifact import inspect_adapter
from agent_sleep.adapters.manifest import check_name
from agent_sleep.errors import (
    AdapterExistsError,
    DeployConflictError,
    InvalidInputError,
    NotFoundError,
    NothingToRollBackError,
    PathExistsError,
)
from agent_sleep.fsutil import atomic_dir
from agent_sleep.names import did_you_mean
from agent_sleep.registry.namespace import claim_agent, claim_skill, missing_adapter, missing_stack
from agent_sleep.registry.notify import notify
from agent_sleep.registry.records import (
    ADAPTER_STATUSES,
    AdapterVersionRecord,
    DeploymentRecord,
    StackItem,
    StackRecord,
)
from agent_sleep.registry.refs import (
    ALIASES,
    AdapterRef,
    StackRef,
    check_one_per_skill,
    is_stack_ref,
    parse_adapter_ref,
    parse_stack_ref,
)
from agent_sleep.store.models import (
    Agent,
    AdapterAlias,
    AdapterVersion,
    Deployment,
    Skill,
    Stack,
    utcnow,
)
from agent_sleep.store.store import ExperienceStore


def _copy_atomic(src: Path, dest: Path, manifest: dict[str, Any]) -> None:
    if dest.exists():
        raise AdapterExistsError(f"{dest} already exists; adapter versions are immutable")
    try:
        with atomic_dir(dest, mark=".tmp-") as tmp:  # readers see the whole folder or nothing
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copyfile(src / name, tmp / name)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    except PathExistsError as exc:
        raise AdapterExistsError(f"{dest} already exists; adapter versions are immutable") from exc


class AdapterRegistry:
    """Adapter versions, stacks and deployments over an :class:`ExperienceStore`'s database."""

    def __init__(self, store: ExperienceStore | None = None, *, url: str | None = None) -> None:
        self.store = store or ExperienceStore(url)
        self.engine = self.store.engine
        self.root = Path(self.store.settings.data_dir) / "adapters"

    # -- adapter versions ------------------------------------------------------------------
    def register(self, folder: str | Path, skill: str, *, description: str | None = None, kind: str | None = None,
                 agent: str | None = None, run_id: str | None = None) -> AdapterVersionRecord:
        """Copy a finished adapter folder in as the next version ``skill@vN`` (status candidate)."""
        check_name(skill)
        src = Path(folder)
        config, parsed = inspect_adapter(src)
        manifest = parsed.model_dump(mode="json")
        generator = (manifest.get("generator") or {}).get("name") or kind or "custom"
        for attempt in range(5):
            with self.store.session() as s:
                if agent is not None:
                    claim_agent(s, agent, base_model=self.store.settings.model)
                if agent is not None and s.get(Agent, agent) is None:
                    s.add(Agent(name=agent, meta={}, created_at=utcnow()))
                claim_skill(s, skill, base_model=self.store.settings.model)
                sk = s.get(Skill, skill)
                if sk is None:
                    s.add(Skill(name=skill, description=description or (manifest.get("sources") or {}).get("description")
                                or "", kind=kind or generator, agent=agent, meta={}, created_at=utcnow()))
                    s.flush()
                version = (s.execute(select(func.max(AdapterVersion.version)).where(AdapterVersion.skill == skill))
                           .scalar() or 0) + 1
                name = f"{skill}@v{version}"
                dest = self.root / skill / f"v{version}"
                final_manifest = {**manifest, "skill": skill, "version": version}
                sources = dict(manifest.get("sources") or {})
                if run_id:
                    sources["run"] = run_id
                try:
                    _copy_atomic(src, dest, final_manifest)
                except AdapterExistsError:
                    if attempt == 4:
                        raise
                    continue  # a concurrent register took this number; the row will tell
                row = AdapterVersion(
                    skill=skill, version=version, name=name, path=str(dest.resolve()),
                    weights_sha256=manifest["weights_sha256"],  # verified above; the copy is byte-exact
                    base_model_id=str((manifest.get("base_model") or {}).get("id", "")),
                    base_model_hash=str(manifest["base_model"]["content_hash"]), generator=generator,
                    rank=int(config.get("r") or manifest.get("rank") or 0),
                    target_modules={"modules": sorted(config.get("target_modules") or manifest.get("target_modules") or [])},
                    status="candidate", status_reason=None, sources=sources,
                    eval_summary=manifest.get("eval_summary") or {}, created_at=utcnow(),
                )
                s.add(row)
                try:
                    s.flush()
                except IntegrityError:
                    shutil.rmtree(dest, ignore_errors=True)
                    raise
                self._move_alias(s, skill, "candidate", row.id)
                return self._adapter_record(s, row)
        raise AdapterExistsError(f"could not allocate a version for {skill!r}")  # pragma: no cover

    def get(self, ref: str | AdapterRef) -> AdapterVersionRecord:
        """``skill@vN``, ``skill@live|previous|candidate``, or ``skill`` (live, else newest usable)."""
        with self.store.session() as s:
            return self._adapter_record(s, self._resolve(s, ref))

    def adapters(self, *, skill: str | None = None, status: str | None = None) -> list[AdapterVersionRecord]:
        stmt = select(AdapterVersion).order_by(AdapterVersion.skill, AdapterVersion.version)
        if skill:
            stmt = stmt.where(AdapterVersion.skill == skill)
        if status:
            stmt = stmt.where(AdapterVersion.status == status)
        with self.store.session() as s:
            return [self._adapter_record(s, row) for row in s.execute(stmt).scalars()]

    def set_status(self, ref: str, status: str, reason: str | None = None) -> AdapterVersionRecord:
        if status not in ADAPTER_STATUSES:
            raise InvalidInputError(f"status must be one of {', '.join(ADAPTER_STATUSES)}, got {status!r}")
        with self.store.session() as s:
            row = self._resolve(s, ref)
            row.status, row.status_reason = status, reason
            return self._adapter_record(s, row)

    def record_eval(self, ref: str, summary: dict[str, Any]) -> None:
        with self.store.session() as s:
            row = self._resolve(s, ref)
            row.eval_summary = {**(row.eval_summary or {}), **summary}

    def lineage(self, ref: str) -> dict[str, Any]:
        """Where a version came from and where it has been live."""
        with self.store.session() as s:
            row = self._resolve(s, ref)
            stacks = [st for st in s.execute(select(Stack)).scalars()
                      if any(i["adapter"] == row.name for i in st.items.get("items", []))]
            deps = list(s.execute(select(Deployment).where(Deployment.stack_id.in_([st.id for st in stacks]))
                                  .order_by(Deployment.created_at)).scalars()) if stacks else []
            return {"adapter": self._adapter_record(s, row).model_dump(mode="json"),
                    "stacks": [st.name for st in stacks],
                    "deployments": [{"id": d.id, "agent": d.agent, "seq": d.seq, "kind": d.kind, "actor": d.actor,
                                     "reason": d.reason, "at": d.created_at.isoformat()} for d in deps]}

    # -- stacks ------------------------------------------------------------------------------
    def create_stack(self, agent: str, items: Sequence[tuple[str | AdapterRef, float] | StackItem | str | AdapterRef]
                     ) -> StackRecord:
        """The stack of these adapter versions (reused when an identical one exists)."""
        with self.store.session() as s:
            return self._stack_record(self._create_stack(s, agent, items))

    def _create_stack(self, s: Session, agent: str, items: Sequence[Any]) -> Stack:
        claim_agent(s, agent, base_model=self.store.settings.model)
        resolved: list[dict[str, Any]] = []
        for item in items:
            ref, weight = (item, 1.0) if isinstance(item, str | AdapterRef) else \
                (item.adapter, item.weight) if isinstance(item, StackItem) else item
            row = self._resolve(s, ref)
            resolved.append({"adapter": row.name, "weight": float(weight)})
        check_one_per_skill(r["adapter"] for r in resolved)
        digest = hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()
        existing = s.execute(select(Stack).where(Stack.agent == agent, Stack.content_hash == digest)).scalar()
        if existing is not None:
            return existing
        if s.get(Agent, agent) is None:
            s.add(Agent(name=agent, meta={}, created_at=utcnow()))
            s.flush()
        version = (s.execute(select(func.max(Stack.version)).where(Stack.agent == agent)).scalar() or 0) + 1
        row = Stack(agent=agent, version=version, name=str(StackRef(agent, version)), items={"items": resolved},
                    content_hash=digest, created_at=utcnow())
        s.add(row)
        s.flush()
        return row

    def get_stack(self, ref: str | StackRef) -> StackRecord:
        """``agent:stack@vN`` (or a :class:`StackRef`), or a stack id."""
        with self.store.session() as s:
            return self._stack_record(self._resolve_stack(s, ref))

    def stacks(self, agent: str | None = None) -> list[StackRecord]:
        stmt = select(Stack).order_by(Stack.agent, Stack.version)
        if agent:
            stmt = stmt.where(Stack.agent == agent)
        with self.store.session() as s:
            return [self._stack_record(r) for r in s.execute(stmt).scalars()]

    # -- deployments -----------------------------------------------------------------------------
    def deploy(self, agent: str, target: str | StackRef | AdapterRef | Sequence[Any], *, actor: str = "user",
               reason: str = "", run_id: str | None = None, expected_seq: int | None = None, kind: str = "deploy",
               previous_id: str | None = None) -> DeploymentRecord:
        """Make a stack live for ``agent``: a stack ref, an adapter ref (``skill@vN``), or a list of items.

        ``expected_seq`` is the deployment sequence number the caller saw as live;
        if another deploy happened since, DeployConflictError is raised and nothing changes.
        """
        try:
            with self.store.session() as s:
                if isinstance(target, StackRef) or is_stack_ref(target):
                    stack = self._resolve_stack(s, target)
                    if stack.agent != agent:
                        raise InvalidInputError(f"stack {target} belongs to agent {stack.agent!r}, not {agent!r}")
                else:
                    stack = self._create_stack(s, agent, [target] if isinstance(target, str | AdapterRef) else target)
                current = self._current(s, agent)
                seq = current.seq if current else 0
                if expected_seq is not None and expected_seq != seq:
                    raise DeployConflictError(f"agent {agent!r} changed while deploying: live deployment is #{seq}, "
                                              f"expected #{expected_seq}; nothing was deployed")
                dep = Deployment(agent=agent, seq=seq + 1, stack_id=stack.id, kind=kind, actor=actor, reason=reason,
                                 run_id=run_id, created_at=utcnow(),
                                 previous_id=previous_id if kind == "rollback" else (current.id if current else None))
                s.add(dep)
                s.flush()
                old = s.get(Stack, current.stack_id) if current else None
                self._update_statuses(s, old, stack, kind)
                notify(s, agent)
                return self._deployment_record(s, dep)
        except IntegrityError as exc:
            raise DeployConflictError(f"another deployment for agent {agent!r} won the race; nothing was deployed "
                                      f"({exc.orig})") from None

    def rollback(self, agent: str, *, to: str | None = None, actor: str = "user", reason: str = "rollback",
                 expected_seq: int | None = None) -> DeploymentRecord:
        """Make an earlier stack live again, as a new deployment.

        Without ``to``, returns to what was live before the current deployment; a
        second rollback steps further back (an undo stack, not a toggle).
        """
        with self.store.session() as s:
            current = self._current(s, agent)
            if current is None:
                raise NothingToRollBackError(f"agent {agent!r} has no deployments"
                                             + did_you_mean(agent, s.execute(select(Deployment.agent)).scalars()))
            if to is None:
                if current.previous_id is None:
                    raise NothingToRollBackError(f"agent {agent!r} has nothing earlier than deployment #{current.seq}")
                target = s.get(Deployment, current.previous_id)
            else:
                target = s.get(Deployment, to) or s.execute(
                    select(Deployment).where(Deployment.agent == agent, Deployment.seq == _int_or(to))).scalar()
                if target is None or target.agent != agent:
                    raise NotFoundError(f"no deployment {to!r} for agent {agent!r}")
            stack = s.get(Stack, target.stack_id)
            assert stack is not None
            seq = current.seq
        return self.deploy(agent, stack.name, actor=actor, reason=reason, kind="rollback",
                           expected_seq=expected_seq if expected_seq is not None else seq,
                           previous_id=target.previous_id)

    def remove_skill(self, agent: str, skill: str, *, actor: str = "user", reason: str = "") -> DeploymentRecord:
        """Deploy the live stack minus one skill; the other skills keep their versions and weights."""
        live = self.live(agent)
        if live is None or skill not in live.stack.skills:
            raise NotFoundError(f"skill {skill!r} is not in the live stack of agent {agent!r}"
                                + did_you_mean(skill, live.stack.skills if live else ()))
        rest = [(i.adapter, i.weight) for i in live.stack.items if parse_adapter_ref(i.adapter).skill != skill]
        return self.deploy(agent, rest, actor=actor, reason=reason or f"remove {skill}", kind="remove_skill",
                           expected_seq=live.seq)

    def live(self, agent: str) -> DeploymentRecord | None:
        with self.store.session() as s:
            cur = self._current(s, agent)
            return self._deployment_record(s, cur) if cur else None

    def deployment(self, deployment_id: str) -> DeploymentRecord:
        with self.store.session() as s:
            row = s.get(Deployment, deployment_id)
            if row is None:
                raise NotFoundError(f"no deployment with id {deployment_id!r}")
            return self._deployment_record(s, row)

    def deployments(self, agent: str) -> list[DeploymentRecord]:
        with self.store.session() as s:
            rows = s.execute(select(Deployment).where(Deployment.agent == agent).order_by(Deployment.seq)).scalars()
            return [self._deployment_record(s, r) for r in rows]

    def live_heads(self) -> dict[str, tuple[int, str]]:
        """{agent: (seq, deployment id)} of every agent's newest deployment; cheap, for polling."""
        with self.store.session() as s:
            newest = select(Deployment.agent, func.max(Deployment.seq).label("seq")).group_by(Deployment.agent).subquery()
            rows = s.execute(select(Deployment.agent, Deployment.seq, Deployment.id)
                             .join(newest, (newest.c.agent == Deployment.agent) & (newest.c.seq == Deployment.seq)))
            return {a: (seq, did) for a, seq, did in rows}

    # -- internals ---------------------------------------------------------------------------------
    def _current(self, s: Session, agent: str) -> Deployment | None:
        return s.execute(select(Deployment).where(Deployment.agent == agent)
                         .order_by(Deployment.seq.desc()).limit(1)).scalar()

    def _update_statuses(self, s: Session, old: Stack | None, new: Stack, kind: str) -> None:
        new_names = {i["adapter"] for i in new.items["items"]}
        old_names = {i["adapter"] for i in old.items["items"]} if old else set()
        for row in s.execute(select(AdapterVersion).where(AdapterVersion.name.in_(new_names | old_names))).scalars():
            if row.name in new_names:
                if row.status != "live":
                    prev = s.get(AdapterAlias, (row.skill, "live"))
                    if prev is not None and prev.version_id != row.id:
                        self._move_alias(s, row.skill, "previous", prev.version_id)
                    self._move_alias(s, row.skill, "live", row.id)
                row.status, row.status_reason = "live", None
            elif self._live_elsewhere(s, row.name, new.agent):
                continue
            else:
                row.status = "rolled_back" if kind == "rollback" else "retired"

    def _live_elsewhere(self, s: Session, name: str, agent: str) -> bool:
        for other in s.execute(select(Deployment.agent).distinct()).scalars():
            if other == agent:
                continue
            cur = self._current(s, other)
            st = s.get(Stack, cur.stack_id) if cur else None
            if st and any(i["adapter"] == name for i in st.items["items"]):
                return True
        return False

    def _move_alias(self, s: Session, skill: str, alias: str, version_id: str) -> None:
        assert alias in ALIASES
        row = s.get(AdapterAlias, (skill, alias))
        if row is None:
            s.add(AdapterAlias(skill=skill, alias=alias, version_id=version_id, updated_at=utcnow()))
        else:
            row.version_id, row.updated_at = version_id, utcnow()
        s.flush()

    def _resolve(self, s: Session, ref: str | AdapterRef) -> AdapterVersion:
        parsed = ref if isinstance(ref, AdapterRef) else parse_adapter_ref(ref)
        skill = parsed.skill
        if parsed.version is not None:
            row = s.execute(select(AdapterVersion).where(AdapterVersion.skill == skill,
                                                         AdapterVersion.version == parsed.version)).scalar()
        elif parsed.alias is not None:
            alias = s.get(AdapterAlias, (skill, parsed.alias))
            row = s.get(AdapterVersion, alias.version_id) if alias else None
        else:
            alias = s.get(AdapterAlias, (skill, "live"))
            row = s.get(AdapterVersion, alias.version_id) if alias else s.execute(
                select(AdapterVersion).where(AdapterVersion.skill == skill, AdapterVersion.status != "rejected")
                .order_by(AdapterVersion.version.desc()).limit(1)).scalar()
        if row is None:
            raise NotFoundError(missing_adapter(s, parsed))
        return row

    def _resolve_stack(self, s: Session, ref: str | StackRef) -> Stack:
        if isinstance(ref, StackRef) or is_stack_ref(ref):
            name = str(ref if isinstance(ref, StackRef) else parse_stack_ref(ref))
            row = s.execute(select(Stack).where(Stack.name == name)).scalar()
        else:
            row = s.get(Stack, ref)  # a stack id
        if row is None:
            raise NotFoundError(missing_stack(s, parse_stack_ref(ref) if isinstance(ref, str) and is_stack_ref(ref)
                                              else ref))
        return row

    def _adapter_record(self, s: Session, row: AdapterVersion) -> AdapterVersionRecord:
        aliases = tuple(sorted(a.alias for a in s.execute(
            select(AdapterAlias).where(AdapterAlias.version_id == row.id)).scalars()))
        return AdapterVersionRecord.model_validate(row).model_copy(update={"aliases": aliases})

    @staticmethod
    def _stack_record(row: Stack) -> StackRecord:
        return StackRecord.model_validate(row)

    def _deployment_record(self, s: Session, row: Deployment) -> DeploymentRecord:
        stack = s.get(Stack, row.stack_id)
        assert stack is not None
        return DeploymentRecord(id=row.id, agent=row.agent, seq=row.seq, stack=self._stack_record(stack), kind=row.kind,
                                actor=row.actor, reason=row.reason, run_id=row.run_id, previous_id=row.previous_id,
                                created_at=row.created_at)


def _int_or(value: str) -> int:
    try:
        return int(value.lstrip("#"))
    except ValueError:
        return -1
