"""One interface for every place an output is published: OCI here, MLflow in :mod:`kubetune.registry.mlflow_store`
(kept apart so that the datagen image, which publishes datasets to OCI only, needs no MLflow).

A service builds the publishers its spec names (the trainer's ``publishers_for``, :func:`for_dataset_build`), checks
them all before the work (a missing credential costs no GPU hours), and publishes what it made to each in turn
(:func:`publish_all`), keeping what went out when a later target fails: a retried pod finds it published and does
not publish it twice. A third target (a Hugging Face-style hub, a KServe model) is one more :class:`Publisher`
here and one more field under ``spec.publish``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from kubetune.api.v1alpha1.datasetbuild import DatasetBuildSpec, OciTargetSpec
from kubetune.registry import oci_store
from kubetune.registry.oci_store import PublishError


@dataclass(frozen=True)
class Output:
    """What is published: a trained adapter (with its lineage) or a written dataset (with its manifest)."""

    kind: Literal["adapter", "dataset"]
    folder: Path
    digest: str
    name: str  # the registered model's name, or the resource's
    lineage: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)  # the run's parameters (MLflow)
    metrics: dict[str, Any] = field(default_factory=dict)  # the run's metrics (MLflow)
    files: list[Path] = field(default_factory=list)  # more files for the run (MLflow): metrics.json, loss.png


@dataclass(frozen=True)
class Publication:
    """Where an output went: ``target`` (mlflow, oci) and ``reference`` (models:/NAME/VERSION, REPO:TAG@DIGEST);
    ``new``: published now, not found there already; ``details``: what the target adds (MLflow's version)."""

    target: str
    reference: str
    digest: str
    new: bool = True
    details: dict[str, Any] = field(default_factory=dict)

    def entry(self) -> dict[str, str]:
        """As status.published and the pod's result list it."""
        return {"target": self.target, "reference": self.reference, "digest": self.digest}


class Publisher(ABC):
    """A place outputs are published to."""

    target: ClassVar[str]
    kinds: ClassVar[frozenset[str]]  # the outputs it takes
    done: ClassVar[str]  # what the log says it did: "pushed to" REFERENCE

    @abstractmethod
    def check(self) -> None:
        """Raise PublishError now when publishing could not work (a credential missing), before the work."""

    @abstractmethod
    def publish(self, output: Output) -> Publication:
        """Publish ``output``; idempotent: the same content found there is not published twice."""


class OciPublisher(Publisher):
    """An ORAS artifact (or a KAITO adapter image) in an OCI registry (:mod:`kubetune.registry.oci_store`)."""

    target = "oci"
    kinds = frozenset({"adapter", "dataset"})
    done = "pushed to"

    def __init__(self, spec: OciTargetSpec):
        self.spec = spec

    def check(self) -> None:
        oci_store.credentials_of(self.spec)

    def publish(self, output: Output) -> Publication:
        if output.kind == "dataset":
            pushed = oci_store.push_dataset(self.spec, output.folder, output.manifest or {})
        else:
            pushed = oci_store.push(self.spec, output.folder, output.lineage or {}, output.name)
        return Publication(self.target, pushed["reference"], output.digest, new=pushed["pushed"] == "true")


def for_dataset_build(spec: DatasetBuildSpec) -> list[Publisher]:
    return [OciPublisher(target) for target in spec.publish.oci]


def check_all(publishers: list[Publisher]) -> None:
    for publisher in publishers:
        publisher.check()


def publish_all(
    publishers: list[Publisher], output: Output, done: list[Publication], say: Callable[[str], None] = print
) -> list[Publication]:
    """Publish ``output`` to each publisher in turn, appending each publication to ``done`` as it goes (so that a
    caller that catches a later target's PublishError knows what went out)."""
    for publisher in publishers:
        if output.kind not in publisher.kinds:
            raise PublishError(f"{publisher.target} takes no {output.kind}")
        publication = publisher.publish(output)
        say(f"{publisher.done if publication.new else 'already in'} {publication.reference}")
        done.append(publication)
    return done
