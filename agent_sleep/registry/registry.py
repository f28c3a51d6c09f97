"""The adapter registry: versions, aliases, stacks and deployments, in SQL.

Lives in the same database as the experience store. Adapter folders are copied
into ``<artifact root>/<skill>/v<N>`` when registered and never change
afterwards; rows are the source of truth for status, aliases and lineage.
History is append-only: a rollback is a new deployment pointing at an earlier
stack, and every status change of a version is a row of its own.

Statuses move only along :data:`TRANSITIONS`. A ``rejected`` version is never
served: rejecting it drops its aliases, aliases never resolve to it, and
:meth:`AdapterRegistry.deploy` (so rollback too) refuses a stack that holds it.
It leaves ``rejected`` through :meth:`AdapterRegistry.approve`, or when a
deploy under a looser policy validates it again (``runtime.deploy``). This
module needs no torch; validation and loading live in the runtime.

Paths travel: a row stores ``<skill>/v<N>`` relative to the artifact root
(``Settings.artifact_root``, default ``<data_dir>/adapters``) and is resolved
against this process's root when read, so hosts sharing one PostgreSQL registry
each mount (or sync) the folders wherever they like. Rows written before that
hold absolute paths; they are read as they are (no migration, since a migration
cannot know each host's root), and when that path is missing here the same
``<skill>/v<N>`` under this root is used instead.

A registered copy's ``adapter_config.json`` names its base model so that
``peft.AutoPeftModelForCausalLM.from_pretrained(folder)`` works: when the
manifest's base model resolves on this host to weights with the manifest's
content hash, ``base_model_name_or_path`` is that folder's absolute path (for the
``smollm2-135m-instruct`` alias, the converted model in the cache dir) or the
Hugging Face id as given. The trade-off: a path is host-specific, but the alias's
weights are a dequantised GGUF that no Hub id serves (the Hub's SmolLM2 would
load, with other weights), so only the path loads the right base, offline; other
hosts with the same cache layout load it too, and the manifest keeps the alias and
content hash, which is what agent-sleep itself checks.

Registering claims ``skill@vN`` with the row first, publishes the folder by one
rename, then commits. A process killed between the rename and the commit leaves
an orphan folder ``vN`` without a row; the next register of that number adopts
it when it holds the very same adapter, or moves it aside to
``.vN.orphan-<pid>-<hex>`` and publishes its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from agent_sleep.adapters.artifact import (
    CONFIG_FILE,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    copy_plain_file,
    inspect_adapter,
)
from agent_sleep.adapters.manifest import AdapterManifest, check_name
from agent_sleep.adapters.stack import check_weight
from agent_sleep.errors import (
    AdapterExistsError,
    AgentSleepError,
    DeployConflictError,
    DeploymentError,
    InvalidInputError,
    NotFoundError,
    NothingToRollBackError,
    TamperedAdapterError,
)
from agent_sleep.fsutil import fresh_name, fsync_dir, fsync_file
from agent_sleep.names import did_you_mean
from agent_sleep.registry.namespace import claim_agent, claim_skill, missing_adapter, missing_stack
from agent_sleep.registry.notify import notify
from agent_sleep.registry.records import (
    ADAPTER_STATUSES,
    AdapterVersionRecord,
    DeploymentRecord,
    Rejection,
    RollbackPlan,
    StackItem,
    StackRecord,
    StatusChangeRecord,
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
    AdapterStatusChange,
    AdapterVersion,
    Deployment,
    Skill,
    Stack,
    utcnow,
)
from agent_sleep.store.store import ExperienceStore


# Which status a version may move to from each status (a repeat of the same status is a no-op).
# ``rejected`` is left only for ``approved``: by hand, or when validation passes under a looser policy.
TRANSITIONS: dict[str, frozenset[str]] = {
    "candidate": frozenset({"approved", "rejected", "live", "retired"}),
    "approved": frozenset({"rejected", "live", "retired"}),
    "live": frozenset({"retired", "rolled_back", "rejected"}),
    "retired": frozenset({"approved", "rejected", "live"}),
    "rolled_back": frozenset({"approved", "rejected", "live", "retired"}),
    "rejected": frozenset({"approved", "rejected"}),
}


logger = logging.getLogger(__name__)

_ATTEMPTS = 5
_STAGE_MARK = ".tmp-"  # ".incoming.tmp-<pid>-<hex>": a copy being registered (debris if a process was killed)
_ORPHAN_MARK = ".orphan-"  # ".vN.orphan-<pid>-<hex>": a folder left without a row, moved aside
# Manifest keys that differ between two registrations of the same adapter (adoption stamps them anew).
_VOLATILE = {"created_at", "agent_sleep_version"}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    fsync_file(path)


def _same_adapter(orphan: Path, config: Mapping[str, Any], manifest: Mapping[str, Any]) -> bool:
    """Whether the folder ``orphan`` holds exactly the adapter about to be published (weights, config, manifest)."""
    try:
        found_config, found = inspect_adapter(orphan)  # hashes its weights against its own manifest
    except (AgentSleepError, OSError):
        return False
    ours = AdapterManifest.model_validate(manifest).model_dump(mode="json", exclude=_VOLATILE)
    return found_config == dict(config) and found.model_dump(mode="json", exclude=_VOLATILE) == ours


def _publish(stage: Path, dest: Path, config: Mapping[str, Any], manifest: Mapping[str, Any]) -> None:
    """Rename the staged folder to ``dest``; an orphan already there is adopted if identical, else moved aside."""
    _write_json(stage / MANIFEST_FILE, manifest)
    fsync_dir(stage)
    if dest.exists() or dest.is_symlink():
        # The caller holds the row for this version, so no live register is publishing here: whatever is at
        # dest was left by a process that died between its rename and its commit.
        if _same_adapter(dest, config, manifest):
            logger.warning("adopting %s, left complete by a register that did not commit", dest)
            return
        aside = fresh_name(dest.parent, f".{dest.name}{_ORPHAN_MARK}")
        os.rename(dest, aside)
        logger.warning("moved %s aside to %s: a register that did not commit left another adapter there",
                       dest, aside.name)  # fmt: skip
    try:
        os.rename(stage, dest)
    except OSError as exc:
        raise AdapterExistsError(f"{dest} appeared while registering; adapter versions are immutable") from exc
    fsync_dir(dest.parent)


class AdapterRegistry:
    """Adapter versions, stacks and deployments over an :class:`ExperienceStore`'s database."""

    def __init__(self, store: ExperienceStore | None = None, *, url: str | None = None) -> None:
        self.store = store or ExperienceStore(url)
        self.engine = self.store.engine
        self.root = self.store.settings.resolved_artifact_root

    # -- adapter versions ------------------------------------------------------------------
    def register(self, folder: str | Path, skill: str, *, description: str | None = None, kind: str | None = None,
                 agent: str | None = None, run_id: str | None = None,
                 manifest: AdapterManifest | None = None) -> AdapterVersionRecord:
        """Copy a finished adapter folder in as the next version ``skill@vN`` (status candidate).

        The folder must pass :func:`~agent_sleep.adapters.artifact.inspect_adapter` (plain files
        only, a well-formed safetensors file whose hash the manifest pins). ``manifest`` is for a
        plain PEFT folder without ``manifest.json`` (see ``adopt_peft_folder``). The bytes copied
        are hashed on the way, so what is registered is what was checked.
        """
        check_name(skill)
        src = Path(folder)
        config, parsed = inspect_adapter(src, manifest=manifest)
        config = self._with_loadable_base(config, parsed)
        stage: Path | None = None
        try:
            for attempt in range(_ATTEMPTS):
                if stage is None or not stage.exists():  # gone once published by an attempt whose commit failed
                    stage = self._stage(src, config, parsed, skill)
                try:
                    return self._add_version(stage, config, parsed, skill, description=description, kind=kind,
                                             agent=agent, run_id=run_id)  # fmt: skip
                except IntegrityError:
                    if attempt == _ATTEMPTS - 1:
                        raise AdapterExistsError(f"could not allocate a version for {skill!r}: "
                                                 "concurrent registers kept taking the next number") from None
                    # A concurrent register took this number (or created the skill); the next try sees its row.
        finally:
            if stage is not None:
                shutil.rmtree(stage, ignore_errors=True)
        raise AssertionError("unreachable")  # pragma: no cover

    def _stage(self, src: Path, config: Mapping[str, Any], manifest: AdapterManifest, skill: str) -> Path:
        """A hidden copy of the adapter beside its future versions, without manifest.json (written at publish)."""
        parent = self.root / skill
        parent.mkdir(parents=True, exist_ok=True)
        stage = fresh_name(parent, f".incoming{_STAGE_MARK}")
        stage.mkdir()
        try:
            sha = copy_plain_file(src / WEIGHTS_FILE, stage / WEIGHTS_FILE)
            if sha != manifest.weights_sha256:
                raise TamperedAdapterError(f"{src / WEIGHTS_FILE} changed while it was being registered")
            _write_json(stage / CONFIG_FILE, config)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return stage

    def _add_version(self, stage: Path, config: Mapping[str, Any], parsed: AdapterManifest, skill: str, *,
                     description: str | None, kind: str | None, agent: str | None,
                     run_id: str | None) -> AdapterVersionRecord:  # fmt: skip
        manifest = parsed.model_dump(mode="json")
        generator = (manifest.get("generator") or {}).get("name") or kind or "custom"
        with self.store.session() as s:
            if agent is not None:
                claim_agent(s, agent, base_model=self.store.settings.model)
            if agent is not None and s.get(Agent, agent) is None:
                s.add(Agent(name=agent, meta={}, created_at=utcnow()))
            claim_skill(s, skill, base_model=self.store.settings.model)
            if s.get(Skill, skill) is None:
                s.add(Skill(name=skill, description=description or (manifest.get("sources") or {}).get("description")
                            or "", kind=kind or generator, agent=agent, meta={}, created_at=utcnow()))
                s.flush()
            version = (s.execute(select(func.max(AdapterVersion.version)).where(AdapterVersion.skill == skill))
                       .scalar() or 0) + 1
            sources = dict(manifest.get("sources") or {})
            if run_id:
                sources["run"] = run_id
            row = AdapterVersion(
                skill=skill, version=version, name=f"{skill}@v{version}", path=f"{skill}/v{version}",
                weights_sha256=manifest["weights_sha256"],  # verified, and the staged copy hashed the same
                base_model_id=str((manifest.get("base_model") or {}).get("id", "")),
                base_model_hash=str(manifest["base_model"]["content_hash"]), generator=generator,
                rank=int(config.get("r") or manifest.get("rank") or 0),
                target_modules={"modules": sorted(config.get("target_modules") or manifest.get("target_modules") or [])},
                status="candidate", status_reason=None, sources=sources,
                eval_summary=manifest.get("eval_summary") or {}, created_at=utcnow(),
            )
            s.add(row)
            # Claims skill@vN before anything is on disk: a concurrent register of the same number waits here
            # until this transaction ends, then fails with IntegrityError and tries the next number.
            s.flush()
            self._move_alias(s, skill, "candidate", row.id)
            record = self._adapter_record(s, row)
            # Last before the commit, so the window in which a crash leaves an orphan folder is one rename wide.
            _publish(stage, self.root / skill / f"v{version}", config, {**manifest, "skill": skill, "version": version})
        return record

    def _with_loadable_base(self, config: Mapping[str, Any], manifest: AdapterManifest) -> dict[str, Any]:
        """``config`` with ``base_model_name_or_path`` set to what loads the manifest's base weights here, if any."""
        from agent_sleep.models.loader import is_default_spec, resolve_model

        spec, out = manifest.base_model.id, dict(config)
        try:
            resolved = resolve_model(spec, self.store.settings) if spec else None
        except (AgentSleepError, OSError):
            resolved = None  # not on this host (or only a label): keep what the folder says
        if resolved is None or resolved.content_hash != manifest.base_model.content_hash:
            return out  # never point a loader at other weights that happen to carry the name
        local = is_default_spec(spec) or Path(spec).expanduser().exists()
        out["base_model_name_or_path"] = str(resolved.path) if local else spec
        return out

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

    def set_status(self, ref: str | AdapterRef, status: str, reason: str | None = None, *, actor: str = "user",
                   detail: dict[str, Any] | None = None) -> AdapterVersionRecord:
        """Move a version to ``status`` along :data:`TRANSITIONS` (InvalidInputError otherwise), recorded.

        Prefer :meth:`approve`, :meth:`retire` and :meth:`reject`, which add their own rules; ``live``,
        ``retired`` and ``rolled_back`` are normally set by deployments.
        """
        with self.store.session() as s:
            row = self._resolve(s, ref)
            self._transition(s, row, status, actor=actor, reason=reason or "", detail=detail)
            return self._adapter_record(s, row)

    def reject(self, ref: str | AdapterRef, reason: str, rejection: Rejection, *,
               actor: str = "user") -> AdapterVersionRecord:
        """Mark a version rejected, with the check and policy that rejected it; its aliases are dropped."""
        return self.set_status(ref, "rejected", reason, actor=actor, detail=rejection.model_dump(mode="json"))

    def approve(self, ref: str | AdapterRef, *, actor: str = "user", reason: str = "") -> AdapterVersionRecord:
        """Approve a version for deployment, lifting a rejection unless the artifact itself failed.

        Approval is not a pass: every deploy still validates under its own policy.
        Refused for a live version and for one rejected for integrity (tampered,
        unreadable, NaN), which a fresh ``register`` replaces instead.
        """
        with self.store.session() as s:
            row = self._resolve(s, ref)
            if row.status == "live":
                raise InvalidInputError(f"{row.name} is live; it is already past approval")
            rejection = self._adapter_record(s, row).rejection
            if rejection is not None and rejection.kind == "integrity":
                raise InvalidInputError(f"{row.name} failed an integrity check ({row.status_reason}); it cannot be "
                                        f"approved: register a good copy as a new version")
            self._transition(s, row, "approved", actor=actor, reason=reason or f"approved by {actor}")
            return self._adapter_record(s, row)

    def retire(self, ref: str | AdapterRef, *, actor: str = "user", reason: str = "") -> AdapterVersionRecord:
        """Take a version that is not live out of use: no longer a candidate, nor listed as a servable model.

        Refused while any agent's live stack holds it (deploy without it first) and for
        a rejected version (that status says more). History is kept; a rollback may still return to it.
        """
        with self.store.session() as s:
            row = self._resolve(s, ref)
            agents = self._live_agents(s, row.name)
            if agents:
                raise DeploymentError(f"{row.name} is live for {', '.join(sorted(agents))}; deploy a stack "
                                      f"without it (agent-sleep remove-skill) before retiring it")
            if row.status == "rejected":
                raise InvalidInputError(f"{row.name} is rejected ({row.status_reason}); a rejected version is out of "
                                        f"use already")
            self._transition(s, row, "retired", actor=actor, reason=reason or f"retired by {actor}")
            alias = s.get(AdapterAlias, (row.skill, "candidate"))
            if alias is not None and alias.version_id == row.id:
                s.delete(alias)  # no longer a candidate
            return self._adapter_record(s, row)

    def status_history(self, ref: str | AdapterRef) -> list[StatusChangeRecord]:
        """Every recorded status change of a version, oldest first."""
        with self.store.session() as s:
            row = self._resolve(s, ref)
            changes = s.execute(select(AdapterStatusChange).where(AdapterStatusChange.version_id == row.id)
                                .order_by(AdapterStatusChange.created_at)).scalars()
            return [StatusChangeRecord(adapter=row.name, from_status=c.from_status, to_status=c.to_status,
                                       actor=c.actor, reason=c.reason, detail=c.detail, created_at=c.created_at)
                    for c in changes]

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
            changes = s.execute(select(AdapterStatusChange).where(AdapterStatusChange.version_id == row.id)
                                .order_by(AdapterStatusChange.created_at)).scalars()
            return {"adapter": self._adapter_record(s, row).model_dump(mode="json"),
                    "status_history": [{"from": c.from_status, "to": c.to_status, "actor": c.actor,
                                        "reason": c.reason, "at": c.created_at.isoformat()} for c in changes],
                    "stacks": [st.name for st in stacks],
                    "deployments": [{"id": d.id, "agent": d.agent, "seq": d.seq, "kind": d.kind, "actor": d.actor,
                                     "reason": d.reason, "at": d.created_at.isoformat()} for d in deps]}

    # -- stacks ------------------------------------------------------------------------------
    def create_stack(self, agent: str, items: Sequence[tuple[str | AdapterRef, float] | StackItem | str | AdapterRef]
                     ) -> StackRecord:
        """The stack of these adapter versions (reused when an identical one exists)."""
        with self.store.session() as s:
            return self._stack_record(self._create_stack(s, agent, items))

    def stack_items(self, items: Sequence[tuple[str | AdapterRef, float] | StackItem | str | AdapterRef]
                    ) -> tuple[StackItem, ...]:
        """The concrete versions and checked weights a stack of ``items`` would hold; writes nothing."""
        with self.store.session() as s:
            return tuple(StackItem(**r) for r in self._resolve_items(s, items))

    def _resolve_items(self, s: Session, items: Sequence[Any]) -> list[dict[str, Any]]:
        resolved: list[dict[str, Any]] = []
        for item in items:
            ref, weight = (item, 1.0) if isinstance(item, str | AdapterRef) else \
                (item.adapter, item.weight) if isinstance(item, StackItem) else item
            row = self._resolve(s, ref)
            resolved.append({"adapter": row.name, "weight": check_weight(weight, row.name)})
        check_one_per_skill(r["adapter"] for r in resolved)
        return resolved

    def _create_stack(self, s: Session, agent: str, items: Sequence[Any]) -> Stack:
        claim_agent(s, agent, base_model=self.store.settings.model)
        resolved = self._resolve_items(s, items)
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
               previous_id: str | None = None, detail: Mapping[str, Any] | None = None) -> DeploymentRecord:
        """Make a stack live for ``agent``: a stack ref, an adapter ref (``skill@vN``), or a list of items.

        ``expected_seq`` is the deployment sequence number the caller saw as live;
        if another deploy happened since, DeployConflictError is raised and nothing changes.
        ``detail``: the numbers behind the deployment, kept with it as JSON (e.g. the online
        guard's test that rolled a stack back); the row is never edited afterwards.
        A stack holding a rejected version is refused (DeploymentError). This records;
        it does not validate: ``agent_sleep.runtime.deploy`` validates first.
        """
        try:
            with self.store.session() as s:
                if isinstance(target, StackRef) or is_stack_ref(target):
                    stack = self._resolve_stack(s, target)
                    if stack.agent != agent:
                        raise InvalidInputError(f"stack {target} belongs to agent {stack.agent!r}, not {agent!r}")
                else:
                    stack = self._create_stack(s, agent, [target] if isinstance(target, str | AdapterRef) else target)
                self._refuse_rejected(s, stack)
                current = self._current(s, agent)
                seq = current.seq if current else 0
                if expected_seq is not None and expected_seq != seq:
                    raise DeployConflictError(f"agent {agent!r} changed while deploying: live deployment is #{seq}, "
                                              f"expected #{expected_seq}; nothing was deployed")
                dep = Deployment(agent=agent, seq=seq + 1, stack_id=stack.id, kind=kind, actor=actor, reason=reason,
                                 run_id=run_id, created_at=utcnow(), detail=_json_detail(detail),
                                 previous_id=previous_id if kind == "rollback" else (current.id if current else None))
                s.add(dep)
                s.flush()
                old = s.get(Stack, current.stack_id) if current else None
                self._update_statuses(s, old, stack, kind, actor=actor, reason=f"{kind} #{dep.seq} for {agent}")
                notify(s, agent)
                return self._deployment_record(s, dep)
        except IntegrityError as exc:
            raise DeployConflictError(f"another deployment for agent {agent!r} won the race; nothing was deployed "
                                      f"({exc.orig})") from None

    def rollback(self, agent: str, *, to: str | None = None, actor: str = "user", reason: str = "rollback",
                 expected_seq: int | None = None, detail: Mapping[str, Any] | None = None) -> DeploymentRecord:
        """Make an earlier stack live again, as a new deployment.

        Without ``to``, returns to what was live before the current deployment; a
        second rollback steps further back (an undo stack, not a toggle). ``expected_seq``:
        roll back only if deployment #``expected_seq`` is still the live one (else
        DeployConflictError, nothing changes). ``detail``: as for :meth:`deploy`.
        """
        plan = self.rollback_plan(agent, to=to)
        return self.deploy(agent, plan.target, actor=actor, reason=reason, kind="rollback",
                           expected_seq=expected_seq if expected_seq is not None else plan.expected_seq,
                           previous_id=plan.previous_id, detail=detail)

    def rollback_plan(self, agent: str, *, to: str | None = None) -> RollbackPlan:
        """What :meth:`rollback` with these arguments would make live; writes nothing (validate it first)."""
        with self.store.session() as s:
            current = self._current(s, agent)
            if current is None:
                raise NothingToRollBackError(f"agent {agent!r} has no deployments"
                                             + did_you_mean(agent, s.execute(select(Deployment.agent)).scalars()))
            if to is None:
                if current.previous_id is None:
                    if current.kind == "rollback" or not self._stack_record(s.get(Stack, current.stack_id)).items:
                        raise NothingToRollBackError(f"agent {agent!r} has nothing earlier than deployment "
                                                     f"#{current.seq}")  # fmt: skip
                    # the first deployment: what served before it was the base model
                    return RollbackPlan(agent=agent, stack=None, target_seq=0, previous_id=None,
                                        expected_seq=current.seq)  # fmt: skip
                target = s.get(Deployment, current.previous_id)
            else:
                target = s.get(Deployment, to) or s.execute(
                    select(Deployment).where(Deployment.agent == agent, Deployment.seq == _int_or(to))).scalar()
                if target is None or target.agent != agent:
                    raise NotFoundError(f"no deployment {to!r} for agent {agent!r}")
            stack = s.get(Stack, target.stack_id)
            assert stack is not None
            return RollbackPlan(agent=agent, stack=self._stack_record(stack), target_seq=target.seq,
                                previous_id=target.previous_id, expected_seq=current.seq)

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

    def _update_statuses(self, s: Session, old: Stack | None, new: Stack, kind: str, *, actor: str,
                         reason: str) -> None:
        new_names = {i["adapter"] for i in new.items["items"]}
        old_names = {i["adapter"] for i in old.items["items"]} if old else set()
        for row in s.execute(select(AdapterVersion).where(AdapterVersion.name.in_(new_names | old_names))).scalars():
            if row.name in new_names:
                if row.status != "live":
                    prev = s.get(AdapterAlias, (row.skill, "live"))
                    if prev is not None and prev.version_id != row.id:
                        self._move_alias(s, row.skill, "previous", prev.version_id)
                    self._move_alias(s, row.skill, "live", row.id)
                self._transition(s, row, "live", actor=actor, reason=reason)
                row.status_reason = None  # the deployment says why; the history row keeps ``reason``
            elif row.status != "live" or self._live_agents(s, row.name, besides=new.agent):
                continue  # still live for another agent, or rejected while it was live: leave it
            else:
                self._transition(s, row, "rolled_back" if kind == "rollback" else "retired", actor=actor,
                                 reason=reason)
                row.status_reason = None

    def _live_agents(self, s: Session, name: str, *, besides: str | None = None) -> list[str]:
        """The agents (other than ``besides``) whose live stack holds version ``name``."""
        agents = []
        for other in s.execute(select(Deployment.agent).distinct()).scalars():
            if other == besides:
                continue
            cur = self._current(s, other)
            st = s.get(Stack, cur.stack_id) if cur else None
            if st and any(i["adapter"] == name for i in st.items["items"]):
                agents.append(other)
        return agents

    def _transition(self, s: Session, row: AdapterVersion, status: str, *, actor: str, reason: str,
                    detail: dict[str, Any] | None = None) -> None:
        """Move ``row`` to ``status`` if :data:`TRANSITIONS` allows it, and record the change.

        A rejection drops the version's aliases, so no alias can serve it.
        """
        if status not in ADAPTER_STATUSES:
            raise InvalidInputError(f"status must be one of {', '.join(ADAPTER_STATUSES)}, got {status!r}")
        if status == row.status and status != "rejected":
            return  # nothing changes (a second rejection records its newer detail)
        allowed = TRANSITIONS.get(row.status, frozenset(ADAPTER_STATUSES))
        if status not in allowed:
            raise InvalidInputError(f"{row.name} is {row.status}; it cannot become {status} (from {row.status}: "
                                    f"{', '.join(sorted(allowed)) or 'nothing'})")
        s.add(AdapterStatusChange(version_id=row.id, from_status=row.status, to_status=status, actor=actor,
                                  reason=reason, detail=detail, created_at=utcnow()))
        row.status, row.status_reason, row.status_detail = status, reason or None, detail
        if status == "rejected":
            for alias in s.execute(select(AdapterAlias).where(AdapterAlias.version_id == row.id)).scalars():
                s.delete(alias)
        s.flush()

    def _refuse_rejected(self, s: Session, stack: Stack) -> None:
        names = [i["adapter"] for i in stack.items["items"]]
        if not names:
            return
        bad = s.execute(select(AdapterVersion).where(AdapterVersion.name.in_(names),
                                                     AdapterVersion.status == "rejected")).scalars().all()
        if bad:
            what = "; ".join(f"{r.name} ({r.status_reason or 'no reason recorded'})" for r in bad)
            raise DeploymentError(f"{stack.name} holds rejected versions, nothing was deployed: {what}. A deploy "
                                  f"under a policy it passes validates it again; `agent-sleep adapters approve` "
                                  f"lifts a rejection by hand")

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
            if row is not None and row.status == "rejected":  # an alias left over from before migration 0003
                raise NotFoundError(f"{str(ref)!r} points at {row.name}, which is rejected ({row.status_reason}); "
                                    f"aliases never name a rejected version")
        else:
            alias = s.get(AdapterAlias, (skill, "live"))
            row = s.get(AdapterVersion, alias.version_id) if alias else None
            if row is None or row.status == "rejected":
                row = s.execute(
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

    def artifact_path(self, stored: str, skill: str, version: int) -> Path:
        """Where a row's folder is on this host: ``stored`` under the artifact root, or an old absolute path."""
        path = Path(stored)
        if not path.is_absolute():
            return self.root / path
        moved = self.root / skill / f"v{version}"
        return moved if not path.exists() and moved.exists() else path

    def _adapter_record(self, s: Session, row: AdapterVersion) -> AdapterVersionRecord:
        aliases = tuple(sorted(a.alias for a in s.execute(
            select(AdapterAlias).where(AdapterAlias.version_id == row.id)).scalars()))
        path = str(self.artifact_path(row.path, row.skill, row.version))
        return AdapterVersionRecord.model_validate(row).model_copy(update={"aliases": aliases, "path": path})

    @staticmethod
    def _stack_record(row: Stack) -> StackRecord:
        return StackRecord.model_validate(row)

    def _deployment_record(self, s: Session, row: Deployment) -> DeploymentRecord:
        stack = s.get(Stack, row.stack_id)
        assert stack is not None
        return DeploymentRecord(id=row.id, agent=row.agent, seq=row.seq, stack=self._stack_record(stack), kind=row.kind,
                                actor=row.actor, reason=row.reason, run_id=row.run_id, previous_id=row.previous_id,
                                detail=row.detail, created_at=row.created_at)


def _json_detail(detail: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``detail`` as plain JSON values (checked here, so a value JSON cannot hold fails before anything is written)."""
    if detail is None:
        return None
    try:
        return json.loads(json.dumps(dict(detail), allow_nan=False, default=str))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"a deployment's detail must be JSON (finite numbers, string keys): {exc}") from None


def _int_or(value: str) -> int:
    try:
        return int(value.lstrip("#"))
    except ValueError:
        return -1
