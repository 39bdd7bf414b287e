"""Pod Security "restricted", as a check over a pod spec: used for the chart's pods and the operator's Jobs.

The test API server runs no admission, so the tests apply the profile's rules (Kubernetes 1.25+ policy) here.
"""

from __future__ import annotations

from typing import Any

# Pod Security "restricted": the only volume types allowed.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """What in a pod spec breaks Pod Security "restricted" (Kubernetes 1.25+), as messages."""
    bad = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            bad.append(f"{field} is true")
    pod_sc = spec.get("securityContext") or {}
    if (pod_sc.get("seLinuxOptions") or {}).get("type") not in (None, "", "container_t", "container_init_t"):
        bad.append("pod seLinuxOptions.type")
    if pod_sc.get("runAsUser") == 0:
        bad.append("pod runAsUser is 0")
    if pod_sc.get("sysctls"):
        bad.append("pod sysctls")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            bad.append(f"volume {volume['name']} has type {sorted(kinds)}")
    containers = [*(spec.get("initContainers") or []), *spec["containers"], *(spec.get("ephemeralContainers") or [])]
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{name}: capabilities.drop lacks ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: capabilities.add {caps['add']}")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            bad.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0:
            bad.append(f"{name}: runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile.type is {seccomp}")
        if sc.get("procMount") not in (None, "Default"):
            bad.append(f"{name}: procMount")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            bad.append(f"{name}: hostPort")
    return bad
