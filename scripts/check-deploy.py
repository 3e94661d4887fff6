#!/usr/bin/env python3
"""Static checks of the deployment files (no Docker engine or cluster on
the build machines): every YAML file parses; the compose file and the
Kubernetes manifests set only environment variables the binaries accept
(read from their --help) and expose the ports their LISTEN_ADDR and
METRICS_PORT name; the manifests validate against the Kubernetes JSON
schemas (kubernetes-validate); the manifests work on a local cluster (kind,
minikube: no pull of a locally loaded :latest image) and with IAM roles for
service accounts (no AWS keys required or shipped in the Secret), and spread
the cache pods over hosts or zones; the Dockerfile ships the binaries where
the compose and manifest commands expect them.

Usage: scripts/check-deploy.py BIN_DIR   (directory holding milena-cache and milena-router)
"""
import glob
import os
import re
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug")
# Read by the AWS credential and region chain, not by clap.
AWS_CHAIN = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
             "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
             "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL"}
# Helpers the manifests define only to build other values ($(POD_NAME)).
K8S_HELPERS = {"POD_NAME", "POD_NAMESPACE"}

errors = []


def fail(msg):
    errors.append(msg)


def accepted(binary):
    out = subprocess.run([os.path.join(BIN, binary), "--help"], capture_output=True, text=True, check=True).stdout
    names = set(re.findall(r"\[env: ([A-Z0-9_]+)", out))
    if not names:
        sys.exit(f"no [env: ...] found in {binary} --help")
    return names


ENV = {"milena-cache": accepted("milena-cache") | AWS_CHAIN | K8S_HELPERS,
       "milena-router": accepted("milena-router") | K8S_HELPERS}


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# 1. Every YAML file parses.
yamls = sorted(glob.glob(os.path.join(ROOT, "docker", "**", "*.y*ml"), recursive=True))
docs = {}
for y in yamls:
    try:
        docs[y] = load_all(y)
    except yaml.YAMLError as e:
        fail(f"{y}: does not parse: {e}")
print(f"{len(yamls)} YAML files parse")


def binary_of(command):
    cmd = command if isinstance(command, str) else " ".join(command or [])
    for b in ("milena-cache", "milena-router"):
        if b in cmd:
            return b
    return None


# 2. Compose: variables and ports.
compose_path = os.path.join(ROOT, "docker", "docker-compose.yml")
compose = docs[compose_path][0]
services = compose["services"]
metrics_targets = set()
for name, svc in services.items():
    b = binary_of(svc.get("command"))
    if b is None:
        continue
    env = dict(e.split("=", 1) for e in svc.get("environment", []))
    for var in env:
        if var not in ENV[b]:
            fail(f"compose {name}: {b} does not accept {var}")
    published = {int(p.split(":")[-1]) for p in svc.get("ports", [])}
    listen = port_of(env["LISTEN_ADDR"])
    if listen not in published:
        fail(f"compose {name}: LISTEN_ADDR port {listen} is not published")
    if "METRICS_PORT" in env:
        if int(env["METRICS_PORT"]) not in published:
            fail(f"compose {name}: METRICS_PORT {env['METRICS_PORT']} is not published")
        metrics_targets.add(f"{name}:{env['METRICS_PORT']}")
    if "ROUTER_ADDR" in env:
        host, port = env["ROUTER_ADDR"].split("//")[1].rsplit(":", 1)
        router = services.get(host)
        if router is None or port_of(dict(e.split("=", 1) for e in router["environment"])["LISTEN_ADDR"]) != int(port):
            fail(f"compose {name}: ROUTER_ADDR {env['ROUTER_ADDR']} is not the router service's port")
    if "ADVERTISE_ADDR" in env and not env["ADVERTISE_ADDR"].endswith(f"{name}:{listen}"):
        fail(f"compose {name}: ADVERTISE_ADDR {env['ADVERTISE_ADDR']} is not this service's port")
print(f"compose: {sum(1 for s in services.values() if binary_of(s.get('command')))} Milena services checked")

# 3. Prometheus scrapes exactly the nodes' metrics ports and the router.
prom = docs[os.path.join(ROOT, "docker", "prometheus.yml")][0]
scraped = {t for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
for t in metrics_targets:
    if t not in scraped:
        fail(f"prometheus.yml does not scrape {t}")

# 4. Kubernetes: variables, ports, probes, services; then the schemas.
k8s = {p: d for p, d in docs.items() if "/k8s/" in p}
objects = [(p, o) for p, ds in k8s.items() for o in ds if o.get("kind") != "Kustomization"]
configmaps = {o["metadata"]["name"]: o.get("data", {}) for _, o in objects if o["kind"] == "ConfigMap"}
services_k8s = [o for _, o in objects if o["kind"] == "Service"]
for path, o in objects:
    if o["kind"] not in ("Deployment", "StatefulSet"):
        continue
    labels = o["spec"]["template"]["metadata"]["labels"]
    for c in o["spec"]["template"]["spec"]["containers"]:
        b = binary_of(c.get("command")) or ("milena-router" if "router" in c["image"] else None)
        if b is None:
            fail(f"{path}: container {c['name']} runs no Milena binary")
            continue
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        for ef in c.get("envFrom", []):
            env.update(configmaps[ef["configMapRef"]["name"]])
        for var in env:
            if var not in ENV[b]:
                fail(f"{path}: {b} does not accept {var}")
        ports = {p["containerPort"] for p in c.get("ports", [])}
        listen = port_of(env["LISTEN_ADDR"])
        if listen not in ports:
            fail(f"{path}: LISTEN_ADDR port {listen} is not a containerPort")
        if "METRICS_PORT" in env and int(env["METRICS_PORT"]) not in ports:
            fail(f"{path}: METRICS_PORT {env['METRICS_PORT']} is not a containerPort")
        for probe in ("readinessProbe", "livenessProbe"):
            pr = c.get(probe)
            if pr is None:
                fail(f"{path}: {c['name']} has no {probe}")
                continue
            port = (pr.get("httpGet") or pr.get("tcpSocket") or {}).get("port")
            if port is not None and port not in ports:
                fail(f"{path}: {probe} port {port} is not a containerPort")
            cmd = " ".join((pr.get("exec") or {}).get("command", []))
            m = re.search(r":(\d+)", cmd)
            if m and int(m.group(1)) not in ports:
                fail(f"{path}: {probe} pings port {m.group(1)}, not a containerPort")
        ann = o["spec"]["template"]["metadata"].get("annotations", {})
        if "prometheus.io/port" in ann and int(ann["prometheus.io/port"]) not in ports:
            fail(f"{path}: prometheus.io/port {ann['prometheus.io/port']} is not a containerPort")
        for svc in services_k8s:
            if all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()):
                for sp in svc["spec"]["ports"]:
                    if sp.get("targetPort", sp["port"]) not in ports:
                        fail(f"service {svc['metadata']['name']}: targetPort {sp.get('targetPort')} is not a containerPort of {o['metadata']['name']}")
        if b == "milena-cache" and "ROUTER_ADDR" in env:
            host, port = env["ROUTER_ADDR"].split("//")[1].rsplit(":", 1)
            if not any(s["metadata"]["name"] == host and any(sp["port"] == int(port) for sp in s["spec"]["ports"]) for s in services_k8s):
                fail(f"{path}: ROUTER_ADDR {env['ROUTER_ADDR']} names no Service port")
kustomization = [o for ds in k8s.values() for o in ds if o.get("kind") == "Kustomization"]
for kz in kustomization:
    for r in kz["resources"]:
        if not os.path.exists(os.path.join(ROOT, "docker", "k8s", r)):
            fail(f"kustomization lists missing {r}")
    listed = set(kz["resources"])
    for path, ds in k8s.items():
        if not any(d.get("kind") == "Kustomization" for d in ds) and os.path.basename(path) not in listed:
            fail(f"kustomization does not list {os.path.basename(path)}")

# 4b. Pull policy, optional AWS keys (IRSA), service accounts, spreading.
secrets = {o["metadata"]["name"]: {**o.get("data", {}), **o.get("stringData", {})}
           for _, o in objects if o["kind"] == "Secret"}
accounts = {o["metadata"]["name"] for _, o in objects if o["kind"] == "ServiceAccount"}
for name, keys in secrets.items():
    for k in keys:
        if k.startswith("AWS_"):
            fail(f"secret {name}: ships {k}: placeholder AWS keys win over IRSA; document how to add them instead")
for path, o in objects:
    if o["kind"] not in ("Deployment", "StatefulSet"):
        continue
    what = f"{path}: {o['kind']} {o['metadata']['name']}"
    pod = o["spec"]["template"]["spec"]
    for c in pod.get("initContainers", []) + pod["containers"]:
        image = c["image"]
        tag = image.rsplit("/", 1)[-1].split(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else "latest"
        policy = c.get("imagePullPolicy")
        if policy is None:
            fail(f"{what}: container {c['name']} has no imagePullPolicy (the default for :latest is Always, which a locally loaded image cannot start with)")
        elif policy == "Always" and tag == "latest" and "@" not in image:
            fail(f"{what}: container {c['name']} pulls {image} Always: a locally loaded image (kind, minikube) cannot start")
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref is None:
                continue
            if ref["key"].startswith("AWS_") and not ref.get("optional"):
                fail(f"{what}: {e['name']} from secret {ref['name']} must be optional (IRSA needs no keys)")
            if not ref.get("optional") and ref["key"] not in secrets.get(ref["name"], {}):
                fail(f"{what}: {e['name']} needs key {ref['key']} of secret {ref['name']}, which the example Secret lacks")
    sa = pod.get("serviceAccountName")
    if sa is not None and sa not in accounts:
        fail(f"{what}: serviceAccountName {sa} is no ServiceAccount in docker/k8s")
    if o["kind"] == "StatefulSet" and "milena-cache" in o["metadata"]["name"]:
        if sa is None:
            fail(f"{what}: no serviceAccountName (IRSA annotates the cache pods' ServiceAccount)")
        labels = o["spec"]["template"]["metadata"]["labels"]

        def selects(term):
            sel = (term.get("labelSelector") or {}).get("matchLabels", {})
            return bool(sel) and all(labels.get(k) == v for k, v in sel.items())

        anti = (pod.get("affinity") or {}).get("podAntiAffinity") or {}
        terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution", []) + \
            [t["podAffinityTerm"] for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
        spread = pod.get("topologySpreadConstraints", [])
        if not any(selects(t) for t in terms) and not any(selects(t) for t in spread):
            fail(f"{what}: cache pods need pod anti-affinity or a topology spread over their own labels, "
                 "or one host failure takes several nodes")

import kubernetes_validate  # noqa: E402  (installed by scripts/test.sh)

K8S_VERSION = os.environ.get("K8S_VERSION", "1.30.0")
for path, o in objects:
    try:
        kubernetes_validate.validate(o, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        fail(f"{path}: {o['kind']} {o['metadata']['name']}: {e.message} at {'/'.join(map(str, e.path))}")
    except kubernetes_validate.SchemaNotFoundError as e:
        fail(f"{path}: no schema: {e}")
print(f"kubernetes: {len(objects)} objects valid against the {K8S_VERSION} schemas")

# 5. The Dockerfile puts the binaries where the commands expect them.
dockerfile = open(os.path.join(ROOT, "Dockerfile")).read()
if "WORKDIR /app" not in dockerfile:
    fail("Dockerfile: the commands run ./milena-*, so WORKDIR must be /app")
for b in ("milena-router", "milena-cache", "milena-cli"):
    if f"target/release/{b}" not in dockerfile:
        fail(f"Dockerfile does not copy {b}")
if "HEALTHCHECK" not in dockerfile or "USER " not in dockerfile:
    fail("Dockerfile needs a HEALTHCHECK and a non-root USER")
for name, svc in services.items():
    build = svc.get("build")
    if build and not os.path.exists(os.path.join(ROOT, "docker", build["context"], build["dockerfile"])):
        fail(f"compose {name}: no {build['dockerfile']} in context {build['context']}")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print("deployment files: ok")
