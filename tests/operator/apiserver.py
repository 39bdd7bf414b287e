"""A Kubernetes API server for tests: kmock's in-memory API over real HTTP, made to refuse what kube-apiserver
refuses where kubetune, kopf or the tests go. Each behaviour names the upstream code it follows
(k8s.io/apiserver/pkg/endpoints/handlers: create.go, update.go, patch.go, rest.go; k8s.io/apiextensions-apiserver;
apimachinery's metav1 validation and api/errors).

Imitated:

- Patch types by Content-Type (``PatchResource``, patch.go): JSON patch, merge patch, server-side apply; strategic
  merge for built-in kinds only. Anything else, strategic merge on a custom resource included, is 415
  UnsupportedMediaType with the server's list of accepted types (``negotiation.NewUnsupportedMediaTypeError``;
  apiextensions' ``crdHandler.serveResource`` supportedTypes). (:func:`_patch_type`)
- A patch body decoded as its type says (``jsonPatcher.applyJSPatch``): with fieldValidation Strict or Warn, a list
  sent as a merge patch, or an object sent as a JSON patch, is 400 "error decoding patch: json: cannot unmarshal
  array into Go value of type map[string]interface {}" (or ``[]handlers.jsonPatchOp``); with Ignore, the patch
  library's message. A JSON patch that does not apply (a failed ``test`` included) is 422 Invalid with
  ``NewGenericServerResponse``'s message, "the server rejected our request due to an error in our request"; over
  10,000 operations, 413. (:func:`_patched`)
- Patch options (``ValidatePatchOptions``; create and update alike): fieldManager required for apply, at most 128
  bytes; ``force`` only for apply; ``fieldValidation`` one of Ignore, Strict, Warn. (:func:`_write_options`)
- ``fieldValidation`` (rest.go ``fieldValidation``: Warn when none is sent): unknown fields refused with 400
  "strict decoding error: unknown field ..." under Strict, dropped with a ``Warning: 299`` header each under Warn
  (``addStrictDecodingWarnings``), dropped silently under Ignore; for custom resources as the CRD's structural
  pruning does, for built-in kinds against Kubernetes' own OpenAPI schema. (:func:`_unknown_fields_handled`)
- Optimistic concurrency (the registry store's ``GuaranteedUpdate``): an update or patch whose object carries
  another ``metadata.resourceVersion`` than the stored one is 409 Conflict, "Operation cannot be fulfilled on
  KIND.GROUP "NAME": the object has been modified; ...". A custom resource's PUT without one is 422
  (``customResourceStrategy.AllowUnconditionalUpdate`` is false). A create of an existing name is 409
  AlreadyExists; a write to a missing object 404 with the qualified resource named.
- The status subresource (apiextensions' ``statusStrategy.PrepareForUpdate`` and
  ``customResourceStrategy.PrepareForUpdate``): a write to ``/status`` changes status alone (metadata and spec
  kept); status sent to the main resource is ignored; a create never sets status.
- ``metadata.generation`` starts at 1 and goes up on a change outside metadata and status, never on a status
  write; ``resourceVersion`` goes up on every write; uid, creationTimestamp and a name from ``generateName`` are
  set on create; create answers 201.
- ``metadata.managedFields`` (fieldmanager ``FieldManager.Update`` and ``.Apply``, ``managerOrUserAgent``): an
  entry per manager (fieldManager, else the User-Agent's product), operation and subresource; an update owns
  the fields it changed, taking them from other managers; an apply owns the fields it sent, conflicts (409,
  ``NewConflictError``'s message) with another manager's field it would change unless ``force=true``, and
  removes a field it applied before and no longer applies that nobody else owns. (:func:`managed_fields`,
  :func:`_apply`)
- Custom resources checked against the CRD's ``openAPIV3Schema`` before they are stored: types (no coercion:
  ``"3"`` is not a number), enums, bounds, patterns, required fields; a null the schema does not allow pruned,
  then ``default:`` values applied (structural defaulting); ``x-kubernetes-validations`` (CEL, evaluated with
  cel-python; ``oldSelf`` on updates) refuse with the rule's message as 422 Invalid; on an update, values left
  unchanged are not checked again (validation ratcheting, Kubernetes 1.33+); a rule is given only the fields it
  reads, and its result is kept by their values.
- A Service's name a DNS-1035 label (``ValidateServiceName``: it starts with a letter).
- Built-in kinds (Jobs, Pods, ConfigMaps, Services, Events, Leases) checked on create against Kubernetes' own OpenAPI
  schema (kubernetes-validate).
- RBAC: a user given grants (:class:`Grant`: rules of a ClusterRole, or of a Role in one namespace) is refused
  with 403 and the authorizer's message for whatever they do not allow; discovery is open to all. Every request
  is recorded with its user and RBAC verb, group, resource and subresource (:attr:`StrictApiServer.audit`).
- ``pods/log`` with ``tailLines`` (400 before the container started); ``as=Table`` lists with the CRD's printer
  columns (the table convertor); equality-based ``labelSelector`` on lists.

Not imitated (each listed so that no test leans on it unknowingly):

- strategic merge is applied as a JSON merge patch (lists replaced, not merged by their patchMergeKey); server-side
  apply treats every list as atomic (no ``listType: map`` merging), does not create a missing object, and records
  no ``f:.`` or ``k:`` entries in managedFields;
- ``dryRun`` (refused with 400 rather than stored); the JSON patch decoder's warnings on unknown keys of an
  operation; CBOR;
- built-in kinds are not defaulted, their updates are not validated, and their own rules beyond the schema
  (immutable fields, name formats, cross-field checks) do not run; a type error in one is 422 here, where the
  real decoder answers 400;
- admission (Pod Security included: tests check the pod templates against the restricted profile directly);
- set-based label selectors, label selectors on watches, field selectors; watches do not resume from a
  resourceVersion, and the watch sends no bookmarks;
- garbage collection of owned objects; no controllers (the test kubelet plays the Job controller).
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import functools
import itertools
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import celpy
import jsonpatch
import jsonschema
import yaml
from kmock import KubernetesEmulator, RawHandler, Request, ResourceInfo, action, method
from kmock._internal.k8s import KubernetesError, KubernetesScaffold

from kubetune.api.v1alpha1.resources import field_path

VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
BUILTIN_RESOURCES = {
    "v1/namespaces": ResourceInfo(kind="Namespace", namespaced=False, verbs=VERBS),
    "v1/configmaps": ResourceInfo(kind="ConfigMap", namespaced=True, verbs=VERBS),
    "v1/secrets": ResourceInfo(kind="Secret", namespaced=True, verbs=VERBS),
    "v1/services": ResourceInfo(kind="Service", namespaced=True, verbs=VERBS),
    "v1/events": ResourceInfo(kind="Event", namespaced=True, verbs=VERBS),
    "batch/v1/jobs": ResourceInfo(kind="Job", namespaced=True, subresources={"status"}, verbs=VERBS),
    "v1/pods": ResourceInfo(kind="Pod", namespaced=True, subresources={"status"}, verbs=VERBS),
    "coordination.k8s.io/v1/leases": ResourceInfo(kind="Lease", namespaced=True, verbs=VERBS),
}


@attrs.frozen
class ApiError(KubernetesError):
    """An error a real server answers with (422 Invalid, 400 BadRequest, 404, 409), as a Status object."""

    status: int = 422
    reason: str = "Invalid"
    message: str = ""
    details: Any = attrs.field(factory=lambda: {"causes": []})


@dataclass(frozen=True)
class AuditRecord:
    """One request, as RBAC sees it."""

    user: str
    verb: str  # get, list, watch, create, update, patch, delete, deletecollection
    group: str  # "" for the core group
    resource: str  # plural, e.g. jobs; or a non-resource URL path
    subresource: str | None
    namespace: str | None
    name: str | None


@dataclass(frozen=True)
class Grant:
    """One PolicyRule bound to a user: through a ClusterRoleBinding (namespace None) or a RoleBinding."""

    rule: dict[str, Any]  # apiGroups, resources (incl. "jobs/status"), verbs
    namespace: str | None = None

    def allows(self, record: AuditRecord) -> bool:
        if self.namespace is not None and record.namespace != self.namespace:
            return False
        resource = f"{record.resource}/{record.subresource}" if record.subresource else record.resource
        return (
            _matches(self.rule.get("apiGroups", []), record.group)
            and _matches(self.rule.get("resources", []), resource)
            and _matches(self.rule.get("verbs", []), record.verb)
        )


def _matches(allowed: list[str], value: str) -> bool:
    return "*" in allowed or value in allowed


def as_json_schema(node: Any) -> Any:
    """An OpenAPI 3.0 structural schema as JSON Schema: nullable as a type union, boolean exclusive bounds as
    numbers, and unknown properties refused wherever properties are listed (strict field validation)."""
    if not isinstance(node, dict):
        return node
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if "items" in node:
        out["items"] = as_json_schema(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = as_json_schema(node["additionalProperties"])
    if "properties" in node:
        out["properties"] = {k: as_json_schema(v) for k, v in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    if out.pop("nullable", False):
        out["type"] = [out["type"], "null"]
    for bound in ("Minimum", "Maximum"):
        if out.get(f"exclusive{bound}") is True:
            out[f"exclusive{bound}"] = out.pop(bound.lower())
    return out


def prune_nulls_and_default(value: Any, schema: dict[str, Any]) -> Any:
    """Structural defaulting: drop nulls the schema does not allow, then fill absent fields' defaults."""
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        out = {k: v for k, v in value.items() if not (v is None and not props.get(k, {}).get("nullable"))}
        for key, sub in props.items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = prune_nulls_and_default(out[key], sub)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune_nulls_and_default(v, schema["items"]) for v in value]
    return value


class CrdSchema:
    """One served version of a CRD: its schema as JSON Schema, and its CEL rules compiled."""

    _cel = celpy.Environment()

    def __init__(self, crd: dict[str, Any]):
        version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
        self.kind = crd["spec"]["names"]["kind"]
        self.group = crd["spec"]["group"]
        self.openapi = version["schema"]["openAPIV3Schema"]
        self.validator = jsonschema.Draft7Validator(as_json_schema(self.openapi))
        # One per top-level field, for updates: only the fields an update changed are validated (ratcheting).
        self._parts = {
            key: jsonschema.Draft7Validator(as_json_schema(sub))
            for key, sub in (self.openapi.get("properties") or {}).items()
        }
        self.status_subresource = "status" in (version.get("subresources") or {})
        self.printer_columns = version.get("additionalPrinterColumns") or []
        self._programs: dict[str, Any] = {}
        self._reads: dict[str, list[list[str]] | None] = {}
        self._results: dict[str, bool] = {}

    def _program(self, rule: str) -> Any:
        if rule not in self._programs:
            self._programs[rule] = self._cel.program(self._cel.compile(rule))
            self._reads[rule] = _fields_read(rule)
        return self._programs[rule]

    RESULTS_KEPT = 20_000

    def _holds(self, rule: str, value: Any, old: Any) -> bool:
        """Whether ``rule`` holds for ``value`` (``oldSelf``: ``old``), an evaluation error counting as no.

        The rule is given only the fields it reads (``self.a.b``: a.b, and nothing beside it), so an object's
        status does not have to become CEL values for a rule on its name; and a rule's result, a function of
        what it reads, is kept: a thousand resources of one spec are checked once, a status write finds its
        root rule's answer kept from the create."""
        program, reads = self._program(rule), self._reads[rule]
        bindings = {"self": _narrowed(value, reads)}
        if "oldSelf" in rule:
            bindings["oldSelf"] = _narrowed(old, reads)
        key = json.dumps([rule, bindings], sort_keys=True)
        if key not in self._results:
            if len(self._results) >= self.RESULTS_KEPT:
                self._results.clear()
            try:
                result = program.evaluate({name: celpy.json_to_cel(v) for name, v in bindings.items()})
            except celpy.CELEvalError as exc:
                result = exc
            self._results[key] = not isinstance(result, celpy.CELEvalError) and bool(result)
        return self._results[key]

    def _cel_errors(self, value: Any, old: Any, schema: dict[str, Any], where: list[Any]) -> list[str]:
        if old is not None and value == old:
            # Ratcheting (Kubernetes 1.33+): an update's unchanged values are not checked again. The transition
            # rules here are all equalities, which hold on an unchanged value anyway.
            return []
        errors = []
        for rule in schema.get("x-kubernetes-validations") or []:
            if "oldSelf" in rule["rule"] and old is None:
                continue  # transition rules apply to updates only
            if not self._holds(rule["rule"], value, old):
                errors.append(
                    f'{field_path(where) or "<root>"}: Invalid value: "object": {rule.get("message") or rule["rule"]}'
                )
        if isinstance(value, dict):
            for key, sub in (schema.get("properties") or {}).items():
                if key in value:
                    old_sub = old.get(key) if isinstance(old, dict) else None
                    errors += self._cel_errors(value[key], old_sub, sub, [*where, key])
        if isinstance(value, list) and isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):
                errors += self._cel_errors(item, None, schema["items"], [*where, index])
        return errors

    def _schema_errors(self, obj: dict[str, Any], old: dict[str, Any] | None) -> list[tuple[list[Any], Any]]:
        """The schema's errors in ``obj``, each with its path. On an update only the top-level fields it changed
        are checked: with validation ratcheting (Kubernetes 1.33+) an unchanged value's errors do not count, and
        a status write then costs a check of the status alone, not of the whole object."""
        changed = {key for key in {*obj, *(old or {})} if obj.get(key) != (old or {}).get(key)}
        if old is None or any(key not in obj or key not in self._parts for key in changed):
            return [(list(e.absolute_path), e) for e in self.validator.iter_errors(obj)]
        return [([key, *e.absolute_path], e) for key in sorted(changed) for e in self._parts[key].iter_errors(obj[key])]

    def admit(
        self, obj: dict[str, Any], old: dict[str, Any] | None, directive: str = "Strict", warnings: list | None = None
    ) -> dict[str, Any]:
        """The object as the server would store it (unknown fields and nulls pruned, defaults set), or an
        ApiError. Unknown fields are pruned as the apiextensions server's structural pruning does; ``directive``
        (the request's ``fieldValidation``) says whether they refuse the request (Strict), are named in
        ``warnings`` (Warn) or neither (Ignore)."""
        name = (obj.get("metadata") or {}).get("name", "")
        unknown = [
            (path, extra)
            for path, e in self._schema_errors(obj, old)
            if e.validator == "additionalProperties"
            for extra in sorted(set(e.instance) - set(e.schema.get("properties", {})))
        ]
        obj = _unknown_fields_handled(obj, unknown, directive, warnings)
        stored = prune_nulls_and_default(obj, self.openapi)
        errors = [
            f"{field_path(path)}: Invalid value: {e.instance!r}: {e.message}"
            for path, e in sorted(self._schema_errors(stored, old), key=lambda pe: list(map(str, pe[0])))
        ]
        if not errors:  # the server runs CEL only on a schema-valid object
            errors = self._cel_errors(stored, old, self.openapi, [])
        if errors:
            raise ApiError(
                message=f'{self.kind}.{self.group} "{name}" is invalid: ' + "; ".join(errors),
                details={"causes": [{"message": e} for e in errors], "kind": self.kind, "name": name},
            )
        return stored


def _fields_read(rule: str) -> list[list[str]] | None:
    """The paths of fields a CEL rule reads from ``self`` and ``oldSelf`` (``self.a.b.size()``: ["a", "b"]), or
    None when it uses either as a whole (``self == oldSelf``, ``size(self)``): then it is given all of it."""
    paths = []
    for match in re.finditer(r"\b(?:self|oldSelf)\b((?:\.\w+)*)(\s*\()?", rule):
        steps = match.group(1).split(".")[1:]
        if match.group(2) and steps:
            steps.pop()  # a method called on the value (self.name.matches(...)), not a field of it
        if not steps:
            return None
        paths.append(steps)
    return paths


def _narrowed(value: Any, paths: list[list[str]] | None) -> Any:
    """``value`` with only the fields at ``paths`` (all of it when None, or where a path meets a non-object)."""
    if paths is None or not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for first in dict.fromkeys(path[0] for path in paths):
        if first in value:
            rest = [path[1:] for path in paths if path[0] == first]
            out[first] = value[first] if any(not r for r in rest) else _narrowed(value[first], rest)
    return out


def load_crds(folder: Path) -> tuple[dict[str, CrdSchema], dict[str, ResourceInfo]]:
    """For every CRD file in ``folder``, keyed ``group/version/plural``: its schema for admission, and its
    kmock discovery entry (kopf only watches what discovery lists)."""
    schemas, infos = {}, {}
    for path in sorted(folder.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        names = crd["spec"]["names"]
        for version in crd["spec"]["versions"]:
            key = f"{crd['spec']['group']}/{version['name']}/{names['plural']}"
            schemas[key] = CrdSchema(crd)
            infos[key] = ResourceInfo(
                kind=names["kind"],
                namespaced=crd["spec"]["scope"] == "Namespaced",
                singular=names["singular"],
                subresources=set(version.get("subresources") or {}),
                verbs=VERBS,
            )
    return schemas, infos


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Routed(RawHandler):
    """kmock's routing of an API request, kept by action: kmock finds a request's reaction by testing it against
    every reaction's filters in turn (discovery paths first) on every request; an API request's reaction is the
    emulator's own for its action, so once found for an action it is kept, while there are no reactions but the
    emulator's own. Placed just above kmock's routing in the method order (``StrictApiServer.__mro__``)."""

    __slots__ = ()

    async def _handle(self, request: Request) -> aiohttp.web.StreamResponse:
        routes: dict[Any, Any] = self._routes  # type: ignore[attr-defined]
        if request.resource is None or not request.resource.plural or len(self._payloads) != self._own_reactions:  # type: ignore[attr-defined]
            return await super()._handle(request)
        if request.action not in routes:
            depth = max(len(p.priorities) for p in self._payloads)  # kmock's order: by priority, padded
            ordered = sorted(
                self._payloads, key=lambda p: tuple(-x for x in p.priorities) + (0,) * (depth - len(p.priorities))
            )
            routes[request.action] = next((p for p in ordered if request in p._source), None)
        if routes[request.action] is None or routes[request.action]._disabled.is_set():
            return await super()._handle(request)
        return await routes[request.action](request)


@attrs.define(kw_only=True)
class StrictApiServer(KubernetesEmulator, _Routed):
    """kmock's emulator with a real server's admission of custom resources and bookkeeping (module doc)."""

    crds: dict[str, CrdSchema] = attrs.field(factory=dict)
    audit: list[AuditRecord] = attrs.field(factory=list)
    # user -> what RBAC lets them do; users not named here may do anything (the test's own admin).
    grants: dict[str, list[Grant]] = attrs.field(factory=dict)
    denied: list[AuditRecord] = attrs.field(factory=list)
    # (user, message) for each Warning header answered (fieldValidation=Warn: the unknown fields dropped)
    warnings: list[tuple[str, str]] = attrs.field(factory=list)

    def _authorize(self, record: AuditRecord) -> None:
        if record.user not in self.grants or record.resource.startswith("/"):
            return  # unrestricted, or a discovery path
        if not any(grant.allows(record) for grant in self.grants[record.user]):
            self.denied.append(record)
            group = f".{record.group}" if record.group else ""
            where = f'in the namespace "{record.namespace}"' if record.namespace else "at the cluster scope"
            sub = f"/{record.subresource}" if record.subresource else ""
            raise ApiError(
                status=403,
                reason="Forbidden",
                message=f'{record.resource}{group} is forbidden: User "{record.user}" cannot {record.verb} '
                f'resource "{record.resource}{sub}" in API group "{record.group}" {where}',
            )

    # Called with each Job this server stores on create: a stand-in controller reacts without listing them all.
    on_job_created: Any = None
    # (namespace, pod name) -> the file holding the pod's log, which GET .../pods/NAME/log serves (the test
    # kubelet registers the output of the processes it runs).
    pod_logs: dict[tuple[str, str], Path] = attrs.field(factory=dict)
    # resource -> the keys of its stored objects (see _keys_of), and how many of kmock's keys it has taken in.
    _index: dict[Any, list] = attrs.field(factory=dict, init=False)
    _indexed: int = attrs.field(default=0, init=False)

    def _pod_log(self, request: Request) -> aiohttp.web.StreamResponse:
        """``pods/log`` as the kubelet answers through the API server: the container's output as text/plain,
        its last ``tailLines`` lines when asked; 400 while the container has not started."""
        if self._stored(request) is None:
            raise ApiError(status=404, reason="NotFound", message=f'pods "{request.name}" not found')
        path = self.pod_logs.get((request.namespace, request.name))
        if path is None or not path.exists():
            raise ApiError(
                status=400,
                reason="BadRequest",
                message=f'container in pod "{request.name}" is waiting to start: ContainerCreating',
            )
        text = path.read_bytes().decode(errors="replace")
        tail = request.params.get("tailLines")
        if tail is not None:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-int(tail) :]) if int(tail) > 0 else ""
        return aiohttp.web.Response(text=text, content_type="text/plain")

    def _table(self, request: Request, crd: CrdSchema) -> aiohttp.web.StreamResponse:
        """A list or get of custom resources as the meta.k8s.io/v1 Table that ``kubectl get`` asks for: the
        CRD's additionalPrinterColumns (priority 1 only with ``-o wide``: kubectl hides them), a date as an age."""
        rows = []
        for (resource, namespace, name), obj in sorted(self.objects.items(), key=lambda kv: str(kv[0])):
            if resource != request.resource or obj.deleted:
                continue
            if (request.namespace and namespace != request.namespace) or (request.name and name != request.name):
                continue
            raw = obj.raw
            cells = [raw["metadata"]["name"]]
            for column in crd.printer_columns:
                value = _json_path(raw, column["jsonPath"])
                if value is not None and column["type"] == "date":
                    value = _age(value)
                cells.append(value)
            metadata = {k: raw["metadata"].get(k) for k in ("name", "namespace", "uid", "creationTimestamp")}
            rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                    "metadata": metadata}})  # fmt: skip
        if request.name and not rows:
            raise ApiError(status=404, reason="NotFound", message=f'"{request.name}" not found')
        name_column = {"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}
        columns = [name_column] + [
            {"name": c["name"], "type": c["type"], "format": "", "description": c.get("description", ""),
             "priority": c.get("priority", 0)}
            for c in crd.printer_columns
        ]  # fmt: skip
        table = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "1"},
                 "columnDefinitions": columns, "rows": rows}  # fmt: skip
        return aiohttp.web.json_response(table)

    _write_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _routes: dict[Any, Any] = attrs.field(factory=dict, init=False)  # see _Routed
    _own_reactions: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._own_reactions = len(self._payloads)

    _versions: Any = attrs.field(factory=lambda: itertools.count(1), init=False)

    @staticmethod
    def _record_user(request: Request) -> str:
        return (request.headers.get("Authorization") or "").removeprefix("Bearer ").strip()

    def _record(self, request: Request) -> AuditRecord:
        token = (request.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        if request.resource is None or not request.resource.plural:  # discovery: /api, /apis/GROUP/VERSION
            record = AuditRecord(token, "get", "", request.url.path, None, None, None)
            self.audit.append(record)
            return record
        verb = {
            action.LIST: "list",
            action.WATCH: "watch",
            action.FETCH: "get",
            action.CREATE: "create",
            action.DELETE: "delete" if request.name else "deletecollection",
        }.get(request.action)
        if request.action == action.UPDATE:
            verb = "update" if request.method == method.PUT else "patch"
        record = AuditRecord(
            token,
            verb or str(request.action),
            request.resource.group or "",
            request.resource.plural,
            request.subresource,
            request.namespace,
            request.name,
        )
        self.audit.append(record)
        return record

    def _key(self, request: Request) -> str:
        res = request.resource
        return f"{res.group}/{res.version}/{res.plural}" if res.group else f"{res.version}/{res.plural}"

    def _stored(self, request: Request) -> dict[str, Any] | None:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return _copied(self.objects[key].raw)

    def _has_status_subresource(self, request: Request) -> bool:
        if request.resource not in self.resources:
            return False
        return "status" in (self.resources[request.resource].subresources or ())

    def _qualified(self, request: Request) -> str:
        """The resource as the server names it in messages: ``datasetbuilds.kubetune.dev``, ``jobs.batch``, ``pods``."""
        res = request.resource
        return f"{res.plural}.{res.group}" if res.group else res.plural

    def _admit_create(self, request: Request, warnings: list[str]) -> None:
        """``createHandler`` (create.go): the options checked, the body decoded with the request's field
        validation, then the kind's strategy (defaults, validation) and the bookkeeping a create gets."""
        directive = _write_options(request, None)
        if not isinstance(request.data, dict):
            raise ApiError(status=400, reason="BadRequest", message="the body of the request is not a JSON object")
        obj = _copied(request.data)
        res = request.resource
        # A client may leave them out (kopf's Events do): the server knows them from the URL.
        obj.setdefault("apiVersion", f"{res.group}/{res.version}" if res.group else res.version)
        if request.resource in self.resources:
            obj.setdefault("kind", self.resources[request.resource].kind)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise ApiError(message="metadata.name: Required value: name or generateName is required")
        if request.resource in self.resources and self.resources[request.resource].namespaced:
            meta["namespace"] = request.namespace or meta.get("namespace") or "default"
        if self._has_status_subresource(request):
            obj.pop("status", None)  # a create never sets status where status is a subresource
        crd = self.crds.get(self._key(request))
        if crd is not None:
            obj = crd.admit(obj, None, directive, warnings)
            meta = obj["metadata"]
        elif self._key(request) in BUILTIN_RESOURCES:
            obj = _check_builtin(obj, directive, warnings)
            meta = obj["metadata"]
        key = (request.resource, meta.get("namespace"), meta["name"])
        if key in self.objects and not self.objects[key].deleted:
            # store.Create's storage.NewKeyExistsError, as errors.NewAlreadyExists: after the body's decoding (400)
            # and the strategy's validation (422), as the server checks them
            raise ApiError(
                status=409,
                reason="AlreadyExists",
                message=f'{self._qualified(request)} "{meta["name"]}" already exists',
            )
        meta.update(uid=str(uuid.uuid4()), resourceVersion=str(next(self._versions)), creationTimestamp=_now())
        if "spec" in obj:
            meta["generation"] = 1
        meta["managedFields"] = managed_fields(None, obj, _manager(request), "Update", None, obj["apiVersion"])
        _replace_data(request, obj)

    def _admit_update(self, request: Request, old: dict[str, Any], warnings: list[str]) -> None:
        """``UpdateResource`` (update.go) for a PUT, ``PatchResource`` (patch.go) for a PATCH, then the store's
        ``GuaranteedUpdate`` precondition on ``metadata.resourceVersion`` and the kind's update strategy."""
        qualified = self._qualified(request)
        operation, applied = "Update", None
        if request.method == method.PUT:
            directive = _write_options(request, None)
            if not isinstance(request.data, dict):
                raise ApiError(status=400, reason="BadRequest", message="the body of the request is not a JSON object")
            new = _copied(request.data)
            sent = (new.get("metadata") or {}).get("resourceVersion")
            if not sent and self._key(request) in self.crds:
                # customResourceStrategy.AllowUnconditionalUpdate is false: a CR's PUT must say what it replaces.
                kind = self.crds[self._key(request)].kind
                raise ApiError(
                    message=f'{kind}.{request.resource.group} "{request.name}" is invalid: metadata.resourceVersion: '
                    f"Invalid value: 0x0: must be specified for an update"
                )
        else:
            patch_type = _patch_type(request, builtin=self._key(request) not in self.crds)
            directive = _write_options(request, patch_type)
            if patch_type == "apply":
                operation, applied = "Apply", _applied_config(request)
                new = _apply(old, applied, _manager(request), request.params.get("force") == "true", request)
            else:
                new = _patched(old, patch_type, _patch_body(request), directive)
        # GuaranteedUpdate: the object as written must carry the resourceVersion stored now (a PUT's, or one a
        # patch set); a patch that leaves it out is applied to the current object, so it carries that one.
        written = str((new.get("metadata") or {}).get("resourceVersion") or old["metadata"]["resourceVersion"])
        if written != old["metadata"]["resourceVersion"]:
            raise ApiError(
                status=409,
                reason="Conflict",
                message=f'Operation cannot be fulfilled on {qualified} "{request.name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        if self._has_status_subresource(request):
            if request.subresource == "status":
                # statusStrategy.PrepareForUpdate (apiextensions-apiserver): the old object, with the new status
                new = {**old, "status": new.get("status")}
            else:
                # customResourceStrategy.PrepareForUpdate: the main resource keeps the stored status
                new = {k: v for k, v in new.items() if k != "status"}
                if "status" in old:
                    new["status"] = old["status"]
        new = {k: v for k, v in new.items() if v is not None}
        crd = self.crds.get(self._key(request))
        if crd is not None:
            new = crd.admit(new, old, directive, warnings)
        meta = new.setdefault("metadata", {})
        for immutable in ("uid", "creationTimestamp", "name", "namespace"):
            if immutable in old.get("metadata", {}):
                meta[immutable] = old["metadata"][immutable]
        changed = {k: v for k, v in new.items() if k not in ("metadata", "status")}
        before = {k: v for k, v in old.items() if k not in ("metadata", "status")}
        generation = old.get("metadata", {}).get("generation")
        if generation is not None:
            meta["generation"] = generation + (changed != before)
        meta["managedFields"] = managed_fields(
            old, new, _manager(request), operation, request.subresource, new.get("apiVersion", ""), applied
        )
        meta["resourceVersion"] = str(next(self._versions))
        _replace_data(request, [{"op": "replace", "path": "", "value": new}])

    async def _handle(self, request: Request) -> aiohttp.web.StreamResponse:
        if request.method == method.PUT and request.name is not None and request.action is None:
            object.__setattr__(request, "action", action.UPDATE)  # kmock knows no PUT; served as an update here
        try:
            self._authorize(self._record(request))
            if request.resource is not None and request.resource.plural == "pods" and request.subresource == "log":
                return self._pod_log(request)
            crd = self.crds.get(self._key(request)) if request.resource and request.resource.plural else None
            if (
                crd is not None
                and request.action in (action.LIST, action.FETCH)
                and not request.subresource
                and "as=Table" in (request.headers.get("Accept") or "")
            ):
                return self._table(request, crd)
            if (
                request.resource is None
                or not request.resource.plural
                or request.action not in (action.CREATE, action.UPDATE)
            ):
                return await super()._handle(request)
            async with self._write_lock:  # admission reads the stored object: one write at a time
                warnings: list[str] = []
                if request.action == action.CREATE:
                    self._admit_create(request, warnings)
                else:
                    old = self._stored(request)
                    if old is None:
                        raise ApiError(
                            status=404,
                            reason="NotFound",
                            message=f'{self._qualified(request)} "{request.name}" not found',
                        )
                    self._admit_update(request, old, warnings)
                response = await super()._handle(request)
                if request.action == action.CREATE and response.status == 200:
                    response.set_status(201)  # createHandler answers 201 Created (kmock: 200)
                for warning in warnings:  # warning.AddWarning: a 299 Warning header per message
                    response.headers.add("Warning", f'299 - "{_quoted(warning)}"')
                    self.warnings.append((self._record_user(request), warning))
                created = request.action == action.CREATE and 200 <= response.status < 300
                if created and self.on_job_created is not None and self._key(request) == "batch/v1/jobs":
                    self.on_job_created(_copied(request.data))  # a Job made, not one refused (409) as existing
                return response
        except KubernetesError as exc:
            # Answered as a real server answers, not collected as a server-side failure of the test.
            return await self._render_error(exc)
        finally:
            self._forget(request)

    def _KubernetesEmulator__get_objs(self, request: Request, strict: bool) -> list[Any]:
        """kmock finds the objects a request names by walking all of them. Here a request for one object in a
        namespace is a lookup (the same answer: its key is exact), and a list walks only the objects of its
        resource (an index kept beside kmock's store), so a thousand resources' Events and Jobs cost a list of
        pods nothing. A list (not a watch) honours ``labelSelector`` as a real server does."""
        if request.resource is None:
            return KubernetesEmulator._KubernetesEmulator__get_objs(self, request, strict)
        if request.name is not None and request.namespace is not None:
            key = (request.resource, request.namespace, request.name)
            return [self._objects[key]] if key in self._objects else []
        found = []
        for key in self._keys_of(request.resource):
            _, namespace, name = key
            if request.name is not None and name != request.name:
                continue
            if (namespace == request.namespace) if strict else request.namespace in (None, namespace):
                found.append(self._objects[key])
        selector = request.params.get("labelSelector")
        if selector and request.params.get("watch") not in ("true", "1"):
            found = [o for o in found if o.deleted or _selected(o.raw, selector)]
        return found

    def _get_resources(self) -> list[Any]:
        """The resources served: kmock adds those of its stored objects by walking every object, on every list
        (a thousand resources' Events and Jobs walked for each list of pods); the index knows them already."""
        self._keys_of(None)  # bring the index up to date
        return list(set(KubernetesScaffold._get_resources(self)).union(self._index))

    def _keys_of(self, resource: Any) -> list[tuple[Any, str | None, str]]:
        """The stored keys of ``resource``, in kmock's order. kmock only adds keys (a soft deletion keeps one);
        the index takes in the keys added since it last looked, and starts over if any went."""
        store = self._objects._objects
        if len(store) < self._indexed:
            self._index.clear()
            self._indexed = 0
        for key in itertools.islice(store, self._indexed, None):
            self._index.setdefault(key[0], []).append(key)
        self._indexed = len(store)
        return self._index.get(resource, [])

    def _forget(self, request: Request) -> None:
        """Let a served request go. kmock keeps every request for its assertions and matches each new one by
        walking them all, which makes a thousand resources' requests quadratic; this server's record is
        :attr:`audit`. A request still being served (a watch) stays."""
        for index, kept in enumerate(self._requests):
            if kept is request:
                del self._requests[index]
                return


KUBERNETES_VERSION = "1.35.0"  # the kubectl that charts/fetch-helm.sh installs is v1.35


def _selected(obj: dict[str, Any], selector: str) -> bool:
    """Whether ``obj``'s labels match an equality-based label selector (``a=b,c!=d,e,!f``); a set-based one
    (``in``, ``notin``) is refused, as this server does not implement it."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in (t.strip() for t in selector.split(",") if t.strip()):
        if " in " in term or " notin " in term or "(" in term:
            raise ApiError(status=400, reason="BadRequest", message=f"set-based selector {term!r}: not implemented")
        if "!=" in term:
            key, value = (p.strip() for p in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (p.strip() for p in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@functools.cache
def _builtin_validator(kind: str, api_version: str) -> jsonschema.protocols.Validator:
    """kubernetes-validate's strict schema of a built-in kind, loaded once (its ``validate`` reads and parses the
    whole definitions file on every call: 20 ms an object)."""
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    version = [v for v in utils.all_versions() if utils.major_minor(v) <= utils.major_minor(KUBERNETES_VERSION)][-1]
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = utils.schema_contents(f"{folder}/{kind.lower()}-{group_version}.json", KUBERNETES_VERSION)
    except FileNotFoundError:
        raise ApiError(status=404, reason="NotFound", message=f"no schema for {api_version} {kind}") from None
    definitions = utils.schema_contents(f"{folder}/_definitions.json", KUBERNETES_VERSION)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return _RefsKept(schema, registry=registry)


_VALID_REFS: set[str] = set()  # (reference, value) pairs checked and found valid, as JSON
VALID_REFS_KEPT = 50_000


def _ref_kept(validator: Any, ref: str, instance: Any, schema: Any) -> Any:
    """``$ref``, with the values found valid for each definition kept: the objects an operator creates share
    most of their parts (a pod's security context, its mounts, an Event's source), and a definition's answer is
    a function of the value alone. Every reference here names a definition of the one ``_definitions.json`` of
    one Kubernetes version (``/api/_definitions.json#/$defs/X`` from a kind's schema, ``#/$defs/X`` inside it),
    so the text of a reference names one definition wherever it appears. A value with errors is checked again,
    so that they are reported as before."""
    key = json.dumps([ref, instance], sort_keys=True)
    if key in _VALID_REFS:
        return
    errors = list(validator._validate_reference(ref=ref, instance=instance))
    if errors:
        yield from errors
    else:
        if len(_VALID_REFS) >= VALID_REFS_KEPT:
            _VALID_REFS.clear()
        _VALID_REFS.add(key)


_RefsKept = jsonschema.validators.extend(jsonschema.validators.Draft202012Validator, {"$ref": _ref_kept})


def _check_builtin(obj: dict[str, Any], directive: str = "Strict", warnings: list | None = None) -> dict[str, Any]:
    """A built-in object against Kubernetes' OpenAPI schema: unknown fields as ``directive`` says (the strict
    decoder's errors, ``runtime.AsStrictDecodingError`` in create.go), then the first other error refused."""
    validator = _builtin_validator(obj.get("kind", ""), obj.get("apiVersion", ""))
    errors = list(validator.iter_errors(obj))
    unknown = [
        (list(e.absolute_path), extra)
        for e in errors
        if e.validator == "additionalProperties"
        for extra in sorted(set(e.instance) - set(e.schema.get("properties", {})))
    ]
    if unknown:
        obj = _unknown_fields_handled(obj, unknown, directive, warnings)
        errors = list(validator.iter_errors(obj))
    error = jsonschema.exceptions.best_match(errors)
    name = (obj.get("metadata") or {}).get("name") or ""
    if error is None and obj.get("kind") == "Service" and not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name):
        # ValidateServiceName (pkg/apis/core/validation): a DNS-1035 label, apimachinery's IsDNS1035Label message
        raise ApiError(
            message=f'Service "{name}" is invalid: metadata.name: Invalid value: "{name}": a DNS-1035 label must '
            "consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with "
            "an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is "
            "'[a-z]([-a-z0-9]*[a-z0-9])?')"
        )
    if error is not None:
        first = error.message.splitlines()[0]
        where = ".".join(str(p) for p in error.path)
        raise ApiError(
            message=f'{obj.get("kind")} "{obj.get("metadata", {}).get("name")}" is invalid: {where}: {first}'
        )
    return obj


def _json_path(obj: dict[str, Any], path: str) -> Any:
    """A printer column's simple JSONPath (``.status.phase``) in ``obj``; None where a step is missing."""
    value: Any = obj
    for step in path.strip(".").split("."):
        value = value.get(step) if isinstance(value, dict) else None
    return value


def _age(timestamp: str) -> str:
    """An RFC 3339 time as the server prints a date column: the age, e.g. ``42s``, ``5m``, ``3h``."""
    then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _replace_data(request: Request, data: Any) -> None:
    """Put the admitted object into the request kmock stores. kmock finds a request's reactions by the
    request's identity, so the (frozen) request is changed in place rather than copied."""
    object.__setattr__(request, "data", data)


def _copied(value: Any) -> Any:
    """A deep copy of JSON data (a JSON round trip: several times quicker than ``copy.deepcopy``)."""
    return json.loads(json.dumps(value))


def _merge_patch(old: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (lists are replaced; null removes a key, at any depth). What the patch leaves
    alone is shared with ``old``: give it a copy."""
    if not isinstance(patch, dict):
        return _copied(patch)
    out = dict(old) if isinstance(old, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


# --- Writes: options, patch types, preconditions, field ownership ---------------------------------------------

FIELD_VALIDATIONS = ("Ignore", "Strict", "Warn")
# Content-Type -> patch type. A custom resource takes the first three (apiextensions-apiserver's
# crdHandler.serveResource, ``supportedTypes``); a built-in kind strategic merge too (installer.go).
PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
}
MAX_JSON_PATCH_OPERATIONS = 10_000  # patch.go's maxJSONPatchOperations
GO_TYPES = {list: "array", dict: "object", str: "string", bool: "bool", int: "number", float: "number"}


def _write_options(request: Request, patch_type: str | None) -> str:
    """The request's ``fieldValidation`` directive (default Warn: rest.go's ``fieldValidation``), after the
    checks of ``ValidatePatchOptions`` / ``ValidateCreateOptions`` (apimachinery's metav1 validation)."""
    params = request.params
    errors = []
    manager = params.get("fieldManager", "")
    if patch_type == "apply" and not manager:
        errors.append("fieldManager: Required value: is required for apply patch")
    if patch_type not in (None, "apply") and "force" in params:
        errors.append("force: Forbidden: may not be specified for non-apply patch")
    if len(manager) > 128:
        errors.append("fieldManager: Too long: may not be more than 128 bytes")
    directive = params.get("fieldValidation") or "Warn"
    if directive not in FIELD_VALIDATIONS:
        supported = ", ".join(f'"{v}"' for v in FIELD_VALIDATIONS)
        errors.append(f'fieldValidation: Unsupported value: "{directive}": supported values: {supported}')
    if errors:
        kind = "PatchOptions" if patch_type else "CreateOptions" if request.action == action.CREATE else "UpdateOptions"
        raise ApiError(message=f'{kind}.meta.k8s.io "" is invalid: ' + ", ".join(errors))
    if params.get("dryRun"):
        # Not imitated: a dry run would be stored here. Refused rather than pretended.
        raise ApiError(status=400, reason="BadRequest", message="dryRun: not implemented by the test API server")
    return directive


def _patch_type(request: Request, builtin: bool) -> str:
    """The patch type its Content-Type names (``; charset=`` ignored), or 415 as PatchResource answers
    (``negotiation.NewUnsupportedMediaTypeError``) for one the resource does not take."""
    content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    accepted = [t for t, kind in PATCH_TYPES.items() if builtin or kind != "strategic"]
    if content_type not in accepted:
        raise ApiError(
            status=415,
            reason="UnsupportedMediaType",
            message="the body of the request was in an unknown format - accepted media types include: "
            + ", ".join(accepted),
        )
    return PATCH_TYPES[content_type]


def _patch_body(request: Request) -> Any:
    if request.data is not None:
        return request.data
    try:
        return json.loads(request.text)
    except ValueError as exc:
        raise ApiError(status=400, reason="BadRequest", message=f"error decoding patch: {exc}") from None


def _patched(old: dict[str, Any], patch_type: str, body: Any, directive: str) -> dict[str, Any]:
    """``jsonPatcher.applyJSPatch`` (patch.go), and strategic merge as a JSON merge patch (not imitated: lists
    merged by their patchMergeKey). With Strict or Warn the body is first decoded strictly, as the server
    does, so a body of the other patch type's shape is refused with 400 and the decoder's message."""
    strict = directive in ("Strict", "Warn")
    if patch_type == "json":
        if not isinstance(body, list):
            target = "[]handlers.jsonPatchOp" if strict else "jsonpatch.Patch"
            prefix = "error decoding patch: " if strict else ""
            raise ApiError(
                status=400,
                reason="BadRequest",
                message=f"{prefix}json: cannot unmarshal {GO_TYPES.get(type(body), 'object')} into Go value of "
                f"type {target}",
            )
        if len(body) > MAX_JSON_PATCH_OPERATIONS:
            raise ApiError(
                status=413,
                reason="RequestEntityTooLarge",
                message=f"Request entity too large: The allowed maximum operations in a JSON patch is "
                f"{MAX_JSON_PATCH_OPERATIONS}, got {len(body)}",
            )
        try:
            return jsonpatch.apply_patch(_copied(old), body, in_place=True)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException):
            # errors.NewGenericServerResponse(422, ...): its message replaces the patch library's (a failed
            # ``test`` included), which reaches the client only as this.
            raise ApiError(message="the server rejected our request due to an error in our request") from None
    if not isinstance(body, dict):
        if strict:
            raise ApiError(
                status=400,
                reason="BadRequest",
                message=f"error decoding patch: json: cannot unmarshal {GO_TYPES.get(type(body), 'object')} into "
                "Go value of type map[string]interface {}",
            )
        # jsonpatch.MergePatch turns a non-object patch into the document itself, which then fails to decode.
        raise ApiError(
            message=f'"" is invalid: patch: Invalid value: {json.dumps(body)!r}: json: cannot unmarshal '
            f"{GO_TYPES.get(type(body), 'object')} into Go value of type map[string]interface {{}}"
        )
    return _merge_patch(_copied(old), body)


def _applied_config(request: Request) -> dict[str, Any]:
    """A server-side apply body: YAML (JSON being YAML), an object with apiVersion and kind."""
    body = request.data
    if body is None:
        try:
            body = yaml.safe_load(request.text)
        except yaml.YAMLError as exc:
            raise ApiError(status=400, reason="BadRequest", message=f"error decoding YAML: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(status=400, reason="BadRequest", message="error decoding YAML: not an object")
    for required in ("apiVersion", "kind"):
        if not body.get(required):
            raise ApiError(status=400, reason="BadRequest", message=f"Object '{required}' is missing")
    return body


def _manager(request: Request) -> str:
    """``managerOrUserAgent`` (patch.go, create.go, update.go): the fieldManager, else the User-Agent's first
    part (``kopf/1.45.2`` -> ``kopf``)."""
    return request.params.get("fieldManager") or (request.headers.get("User-Agent") or "").split("/")[0][:128]


# Fields no manager owns (structured-merge-diff's reset and ignored fields: identity and server bookkeeping).
UNOWNED = {("apiVersion",), ("kind",)} | {
    ("metadata", key)
    for key in ("name", "namespace", "generateName", "uid", "resourceVersion", "generation", "creationTimestamp",
                "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink")
}  # fmt: skip
_ABSENT = object()


def _leaves(value: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Each owned field of an object by its path, as managedFields counts them: a map's fields one by one, a
    list or a scalar (or an empty map) as one field."""
    if isinstance(value, dict) and (value or not prefix):
        out: dict[tuple[str, ...], Any] = {}
        for key, sub in value.items():
            path = (*prefix, key)
            if path not in UNOWNED:
                out.update(_leaves(sub, path))
        return out
    return {prefix: value}


def _fields_v1(paths: set[tuple[str, ...]]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for step in path:
            node = node.setdefault(f"f:{step}", {})
    return root


def _owned(fields_v1: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    paths: set[tuple[str, ...]] = set()
    for key, sub in fields_v1.items():
        if key.startswith("f:"):
            path = (*prefix, key[2:])
            paths |= _owned(sub, path) if sub else {path}
    return paths


def managed_fields(
    old: dict[str, Any] | None,
    new: dict[str, Any],
    manager: str,
    operation: str,
    subresource: str | None,
    api_version: str,
    applied: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """``metadata.managedFields`` after a write, as the field manager keeps it (``FieldManager.Update`` and
    ``.Apply``, k8s.io/apiserver/pkg/endpoints/handlers/fieldmanager): an Update takes the fields whose value
    it changed from whoever held them; an Apply owns exactly the fields of its configuration; fields gone from
    the object are owned by nobody; an entry left with no fields goes. Entries are keyed by manager, operation
    and subresource."""
    old_leaves = _leaves(old) if old else {}
    new_leaves = _leaves(new)
    if applied is not None:
        mine = set(_leaves(applied)) & set(new_leaves)
    else:
        mine = {path for path, value in new_leaves.items() if old_leaves.get(path, _ABSENT) != value}
    now, entries, found = _now(), [], False
    for entry in (old or {}).get("metadata", {}).get("managedFields") or []:
        owned = {path for path in _owned(entry.get("fieldsV1") or {}) if path in new_leaves}
        if (entry.get("manager"), entry.get("operation"), entry.get("subresource")) == (
            manager, operation, subresource
        ):  # fmt: skip
            found = True
            owned = mine if applied is not None else owned | mine
            entry = {**entry, "time": now} if mine else entry
        else:
            owned -= mine
        if owned:
            entries.append({**entry, "fieldsV1": _fields_v1(owned)})
    if not found and mine:
        entry = {"manager": manager, "operation": operation, "apiVersion": api_version, "time": now,
                 "fieldsType": "FieldsV1", "fieldsV1": _fields_v1(mine)}  # fmt: skip
        if subresource:
            entry["subresource"] = subresource
        entries.append(entry)
    return entries


def _apply(old: dict[str, Any], applied: dict[str, Any], manager: str, force: bool, request: Request) -> dict:
    """Server-side apply (``FieldManager.Apply``): the configuration merged into the object; a field another
    manager owns, whose value it would change, is a conflict (409, unless ``force``); a field this manager
    applied before and no longer applies, owned by nobody else, is removed. Not imitated: list merging by key
    (lists are atomic here), and creating the object when it does not exist."""
    applied_leaves = _leaves(applied)
    old_leaves = _leaves(old)
    conflicts, before, others = [], set(), set()
    for entry in old.get("metadata", {}).get("managedFields") or []:
        owned = _owned(entry.get("fieldsV1") or {})
        if (entry.get("manager"), entry.get("operation"), entry.get("subresource")) == (
            manager, "Apply", request.subresource
        ):  # fmt: skip
            before = owned
            continue
        others |= owned
        for path, value in applied_leaves.items():
            if path in owned and old_leaves.get(path, _ABSENT) != value:
                conflicts.append((entry, path))
    if conflicts and not force:
        # NewConflictError (fieldmanager/internal/conflict.go)
        lines = []
        for entry, path in conflicts:
            where = f' with subresource "{entry["subresource"]}"' if entry.get("subresource") else ""
            lines.append(f'conflict with "{entry["manager"]}"{where} using {entry["apiVersion"]}: .{".".join(path)}')
        count = "1 conflict" if len(lines) == 1 else f"{len(lines)} conflicts"
        raise ApiError(
            status=409,
            reason="Conflict",
            message=f"Apply failed with {count}: " + "\n".join(lines),
            details={"causes": [{"type": "FieldManagerConflict", "field": "." + ".".join(p)} for _, p in conflicts]},
        )
    new = _merge_patch(_copied(old), applied)
    for path in before - set(applied_leaves) - (others - set(applied_leaves)):
        _remove(new, path)
    return new


def _remove(obj: dict[str, Any], path: tuple[str, ...]) -> None:
    node: Any = obj
    for step in path[:-1]:
        node = node.get(step) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(path[-1], None)


def _unknown_fields_handled(
    obj: dict[str, Any], unknown: list[tuple[list[Any], str]], directive: str, warnings: list | None
) -> dict[str, Any]:
    """Unknown fields (each a parent path and a key) under a ``fieldValidation`` directive: Strict refuses the
    request with the strict decoder's 400; Warn and Ignore drop them (structural pruning), Warn naming each
    in a warning (``addStrictDecodingWarnings``, rest.go)."""
    if not unknown:
        return obj
    names = [field_path([*path, key]) for path, key in unknown]
    if directive == "Strict":
        raise ApiError(
            status=400,
            reason="BadRequest",
            message="strict decoding error: " + ", ".join(f'unknown field "{name}"' for name in names),
        )
    if directive == "Warn" and warnings is not None:
        warnings += [f'unknown field "{name}"' for name in names]
    obj = _copied(obj)
    for path, key in unknown:
        node: Any = obj
        for step in path:
            node = node[step]
        node.pop(key, None)
    return obj


def _quoted(text: str) -> str:
    """A Warning header's quoted text (RFC 7234: backslash-escaped quotes and backslashes)."""
    return text.replace("\\", "\\\\").replace('"', '\\"')
