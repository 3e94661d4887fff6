#!/usr/bin/env python3
"""Static checks of the deployment files (no Docker engine or cluster on
the build machines): every YAML file parses; the compose file and the
Kubernetes manifests set only environment variables the binaries accept
(read from their --help) and expose the ports their LISTEN_ADDR and
METRICS_PORT name; the manifests validate against the Kubernetes JSON
schemas (kubernetes-validate); the manifests work on a local cluster (kind,
minikube: no pull of a locally loaded :latest image) and with IAM roles for
service accounts (no AWS keys required or shipped in the Secret), and spread
the cache pods over hosts or zones; membership is in etcd (issue 15): the
compose file and the manifests run an etcd (a compose service with a health
check; a StatefulSet with a volume, probes and its Services), the routers
and nodes name it in ETCD_ENDPOINTS with the same ETCD_PREFIX, the nodes
need no ROUTER_ADDR, and several routers run (two compose services; a
Deployment of two or more replicas with a PodDisruptionBudget), which only
etcd allows; the Dockerfile ships the binaries where the compose and
manifest commands expect them.

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


def urls(value):
    """(host, port) of each URL of a comma-separated list such as
    ETCD_ENDPOINTS or ROUTER_ADDR; port None when the URL has none."""
    out = []
    for u in (value or "").split(","):
        u = u.strip()
        if not u:
            continue
        hostport = u.split("//", 1)[-1].split("/", 1)[0]
        if ":" in hostport:
            host, port = hostport.rsplit(":", 1)
            out.append((host, int(port)))
        else:
            out.append((hostport, None))
    return out


def flag(command, name, default=None):
    """The value of --name=VALUE or --name VALUE in a command (string or list)."""
    args = command.split() if isinstance(command, str) else list(command or [])
    for i, a in enumerate(args):
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
        if a == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
    return default


ETCD_PREFIX_DEFAULT = "/milena"
ETCD_CLIENT_PORT_DEFAULT = 2379


def is_etcd_image(image):
    return "etcd" in (image or "").rsplit("/", 1)[-1].split(":", 1)[0]


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


# 2. Compose: variables and ports; etcd, the routers and the nodes.
compose_path = os.path.join(ROOT, "docker", "docker-compose.yml")
compose = docs[compose_path][0]
services = compose["services"]


def compose_env(svc):
    env = svc.get("environment") or []
    if isinstance(env, dict):
        return {k: "" if v is None else str(v) for k, v in env.items()}
    return dict(e.split("=", 1) if "=" in e else (e, "") for e in env)


def depends_healthy(svc, dep):
    d = svc.get("depends_on") or {}
    if isinstance(d, list):
        return False
    return (d.get(dep) or {}).get("condition") == "service_healthy"


# The etcd services: image, client port (from --listen-client-urls),
# advertised URL, health check and a volume for the data directory.
etcd_compose = {}
for name, svc in services.items():
    if not is_etcd_image(svc.get("image")):
        continue
    cmd = svc.get("command")
    listen = urls(flag(cmd, "listen-client-urls", f"http://localhost:{ETCD_CLIENT_PORT_DEFAULT}"))
    etcd_compose[name] = {p or ETCD_CLIENT_PORT_DEFAULT for _, p in listen}
    for host, _ in urls(flag(cmd, "advertise-client-urls", "")):
        if host != name:
            fail(f"compose {name}: --advertise-client-urls names {host}, not the service {name}")
    test = " ".join(((svc.get("healthcheck") or {}).get("test")) or [])
    if "etcdctl" not in test or "health" not in test:
        fail(f"compose {name}: needs a healthcheck running `etcdctl endpoint health` (the Milena services wait for it)")
    data_dir = flag(cmd, "data-dir")
    named = set((compose.get("volumes") or {}).keys())
    mounts = [v.split(":") for v in svc.get("volumes", []) if isinstance(v, str)]
    if data_dir is None or not any(len(m) >= 2 and m[0] in named and data_dir.startswith(m[1]) for m in mounts):
        fail(f"compose {name}: --data-dir {data_dir} is not on a named volume (membership would not survive a re-create)")
if not etcd_compose:
    fail("compose: no etcd service (membership lives in etcd: image quay.io/coreos/etcd)")

metrics_targets = set()
routers_compose = [n for n, s in services.items() if binary_of(s.get("command")) == "milena-router"]
prefixes = {}
host_ports = {}
for name, svc in services.items():
    for p in svc.get("ports", []):
        parts = str(p).split(":")
        if len(parts) >= 2:
            host_ports.setdefault(parts[-2], []).append(name)
    b = binary_of(svc.get("command"))
    if b is None:
        continue
    env = compose_env(svc)
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
    etcd = env.get("ETCD_ENDPOINTS", "")
    if etcd:
        prefixes[name] = env.get("ETCD_PREFIX", ETCD_PREFIX_DEFAULT)
        for host, port in urls(etcd):
            if host not in etcd_compose:
                fail(f"compose {name}: ETCD_ENDPOINTS names {host}, which is no etcd service")
            elif (port or ETCD_CLIENT_PORT_DEFAULT) not in etcd_compose[host]:
                fail(f"compose {name}: ETCD_ENDPOINTS port {port} is not {host}'s client port")
            elif not depends_healthy(svc, host):
                fail(f"compose {name}: must depend on {host} with condition service_healthy")
    elif b == "milena-router" and len(routers_compose) > 1:
        fail(f"compose {name}: {len(routers_compose)} routers need ETCD_ENDPOINTS (membership in etcd)")
    if b == "milena-cache":
        if etcd and "ROUTER_ADDR" in env:
            fail(f"compose {name}: ROUTER_ADDR is ignored (with a warning) when ETCD_ENDPOINTS is set: remove it")
        if not etcd and "ROUTER_ADDR" not in env:
            fail(f"compose {name}: needs ETCD_ENDPOINTS (or ROUTER_ADDR with a single router)")
        if not etcd and len(urls(env.get("ROUTER_ADDR"))) > 1:
            fail(f"compose {name}: several ROUTER_ADDR entries need ETCD_ENDPOINTS (the node refuses to start)")
        if not etcd and len(routers_compose) > 1:
            fail(f"compose {name}: {len(routers_compose)} routers: the node must register in etcd (ETCD_ENDPOINTS)")
    if "ROUTER_ADDR" in env:
        for host, port in urls(env["ROUTER_ADDR"]):
            router = services.get(host)
            if router is None or port_of(compose_env(router)["LISTEN_ADDR"]) != port:
                fail(f"compose {name}: ROUTER_ADDR {env['ROUTER_ADDR']} is not the router service's port")
    if "ADVERTISE_ADDR" in env and not env["ADVERTISE_ADDR"].endswith(f"{name}:{listen}"):
        fail(f"compose {name}: ADVERTISE_ADDR {env['ADVERTISE_ADDR']} is not this service's port")
if len(routers_compose) < 2:
    fail(f"compose: {len(routers_compose)} router service(s); run two (membership in etcd)")
if len(set(prefixes.values())) > 1:
    fail(f"compose: routers and nodes disagree on ETCD_PREFIX: {prefixes}")
for hp, names in host_ports.items():
    if len(names) > 1:
        fail(f"compose: host port {hp} published by {', '.join(names)}")
print(f"compose: {sum(1 for s in services.values() if binary_of(s.get('command')))} Milena services checked "
      f"({len(routers_compose)} routers, etcd: {', '.join(sorted(etcd_compose)) or 'none'})")

# 3. Prometheus scrapes exactly the nodes' metrics ports and the routers.
prom = docs[os.path.join(ROOT, "docker", "prometheus.yml")][0]
scraped = {t for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
for name in routers_compose:
    metrics_targets.add(f"{name}:{port_of(compose_env(services[name])['LISTEN_ADDR'])}")
for t in metrics_targets:
    if t not in scraped:
        fail(f"prometheus.yml does not scrape {t}")

# 4. Kubernetes: variables, ports, probes, services; then the schemas.
k8s = {p: d for p, d in docs.items() if "/k8s/" in p}
objects = [(p, o) for p, ds in k8s.items() for o in ds if o.get("kind") != "Kustomization"]
configmaps = {o["metadata"]["name"]: o.get("data", {}) for _, o in objects if o["kind"] == "ConfigMap"}
services_k8s = [o for _, o in objects if o["kind"] == "Service"]
pdbs = [o for _, o in objects if o["kind"] == "PodDisruptionBudget"]
# Where a variable's value comes from a Secret or the pod's fields, the
# checks below see this marker instead of a value.
UNKNOWN = "<not in the manifests>"


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_env(path, c):
    """The variables a container gets: envFrom first, then env (which wins),
    with values from ConfigMaps resolved."""
    env = {}
    for ef in c.get("envFrom", []):
        ref = ef.get("configMapRef")
        if ref is None:
            continue
        if ref["name"] not in configmaps:
            if not ref.get("optional"):
                fail(f"{path}: envFrom names ConfigMap {ref['name']}, which docker/k8s lacks")
            continue
        env.update(configmaps[ref["name"]])
    for e in c.get("env", []):
        ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
        if "value" in e:
            env[e["name"]] = e["value"]
        elif ref is not None:
            cm = configmaps.get(ref["name"], {})
            if ref["key"] in cm:
                env[e["name"]] = cm[ref["key"]]
            elif not ref.get("optional"):
                fail(f"{path}: {e['name']} needs key {ref['key']} of ConfigMap {ref['name']}, which it lacks")
        else:
            env[e["name"]] = UNKNOWN
    return env


def container_ports(c):
    ports = {p["containerPort"] for p in c.get("ports", [])}
    return ports | {p["name"] for p in c.get("ports", []) if "name" in p}


# The etcd workloads: (object, labels, client ports).
etcd_k8s = []
milena_k8s = []  # (path, object, binary, env)
for path, o in objects:
    if o["kind"] not in ("Deployment", "StatefulSet"):
        continue
    labels = o["spec"]["template"]["metadata"]["labels"]
    pod = o["spec"]["template"]["spec"]
    for c in o["spec"]["template"]["spec"]["containers"]:
        ports = container_ports(c)
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
            if selects(svc["spec"].get("selector"), labels):
                for sp in svc["spec"]["ports"]:
                    if sp.get("targetPort", sp["port"]) not in ports:
                        fail(f"service {svc['metadata']['name']}: targetPort {sp.get('targetPort')} is not a containerPort of {o['metadata']['name']}")

        if is_etcd_image(c["image"]):
            # etcd: a StatefulSet with its data directory on a claim, behind
            # a headless Service (its serviceName).
            args = (c.get("command") or []) + (c.get("args") or [])
            client = {p or ETCD_CLIENT_PORT_DEFAULT
                      for _, p in urls(flag(args, "listen-client-urls", f"http://localhost:{ETCD_CLIENT_PORT_DEFAULT}"))}
            for p in client:
                if p not in ports:
                    fail(f"{path}: etcd client port {p} (--listen-client-urls) is not a containerPort")
            etcd_k8s.append((o, labels, client))
            if o["kind"] != "StatefulSet":
                fail(f"{path}: etcd must be a StatefulSet (stable name and volume)")
                continue
            data_dir = flag(args, "data-dir")
            claims = {t["metadata"]["name"] for t in o["spec"].get("volumeClaimTemplates", [])}
            if data_dir is None or not any(m["name"] in claims and data_dir.startswith(m["mountPath"])
                                           for m in c.get("volumeMounts", [])):
                fail(f"{path}: etcd --data-dir {data_dir} is not on a volumeClaimTemplate's mount")
            headless = [sv for sv in services_k8s if sv["metadata"]["name"] == o["spec"].get("serviceName")]
            if not headless or headless[0]["spec"].get("clusterIP") != "None" or not selects(headless[0]["spec"].get("selector"), labels):
                fail(f"{path}: serviceName {o['spec'].get('serviceName')} is no headless Service selecting the etcd pods")
            continue

        b = binary_of(c.get("command")) or ("milena-router" if "router" in c["image"] else None)
        if b is None:
            fail(f"{path}: container {c['name']} runs no Milena binary (nor etcd)")
            continue
        env = container_env(path, c)
        for var in env:
            if var not in ENV[b]:
                fail(f"{path}: {b} does not accept {var}")
        listen = port_of(env["LISTEN_ADDR"])
        if listen not in ports:
            fail(f"{path}: LISTEN_ADDR port {listen} is not a containerPort")
        if "METRICS_PORT" in env and int(env["METRICS_PORT"]) not in ports:
            fail(f"{path}: METRICS_PORT {env['METRICS_PORT']} is not a containerPort")
        if b == "milena-cache" and "ROUTER_ADDR" in env:
            for host, port in urls(env["ROUTER_ADDR"]):
                if not any(s["metadata"]["name"] == host and any(sp["port"] == port for sp in s["spec"]["ports"]) for s in services_k8s):
                    fail(f"{path}: ROUTER_ADDR {env['ROUTER_ADDR']} names no Service port")
        milena_k8s.append((path, o, b, env))

# 4a. Membership in etcd: the routers and nodes name a Service in front of
# the etcd StatefulSet, agree on the prefix, and several routers run.
if not any(o["kind"] == "StatefulSet" for o, _, _ in etcd_k8s):
    fail("kubernetes: no etcd StatefulSet (membership lives in etcd)")
k8s_prefixes = {}
for path, o, b, env in milena_k8s:
    what = f"{path}: {o['kind']} {o['metadata']['name']}"
    etcd = env.get("ETCD_ENDPOINTS")
    if etcd == UNKNOWN:
        fail(f"{what}: ETCD_ENDPOINTS must come from a value or a ConfigMap (to be checked here)")
        etcd = None
    if etcd:
        k8s_prefixes[o["metadata"]["name"]] = env.get("ETCD_PREFIX", ETCD_PREFIX_DEFAULT)
        for host, port in urls(etcd):
            name = host.split(".", 1)[0]
            port = port or ETCD_CLIENT_PORT_DEFAULT
            ok = False
            for svc in services_k8s:
                if svc["metadata"]["name"] != name:
                    continue
                for eo, elabels, client in etcd_k8s:
                    if selects(svc["spec"].get("selector"), elabels) and any(
                            sp["port"] == port and sp.get("targetPort", sp["port"]) in client for sp in svc["spec"]["ports"]):
                        ok = True
            if not ok:
                fail(f"{what}: ETCD_ENDPOINTS {host}:{port} is no Service port in front of etcd's client port")
    replicas = o["spec"].get("replicas", 1)
    if b == "milena-router":
        if replicas < 2:
            fail(f"{what}: {replicas} replica(s); run two or more routers (membership in etcd)")
        if replicas > 1 and not etcd:
            fail(f"{what}: {replicas} routers need ETCD_ENDPOINTS (membership in etcd)")
        labels = o["spec"]["template"]["metadata"]["labels"]
        budget = [d for d in pdbs if selects(d["spec"]["selector"].get("matchLabels"), labels)]
        if not budget:
            fail(f"{what}: no PodDisruptionBudget selects the router pods")
        for d in budget:
            spec = d["spec"]
            if not ((isinstance(spec.get("minAvailable"), int) and spec["minAvailable"] >= 1)
                    or (isinstance(spec.get("maxUnavailable"), int) and spec["maxUnavailable"] < replicas)):
                fail(f"pdb {d['metadata']['name']}: must keep at least one of {replicas} routers (minAvailable: 1)")
    if b == "milena-cache":
        if etcd and "ROUTER_ADDR" in env:
            fail(f"{what}: ROUTER_ADDR is ignored (with a warning) when ETCD_ENDPOINTS is set: remove it")
        if not etcd:
            if "ROUTER_ADDR" not in env:
                fail(f"{what}: needs ETCD_ENDPOINTS (or ROUTER_ADDR with a single router)")
            elif len(urls(env["ROUTER_ADDR"])) > 1:
                fail(f"{what}: several ROUTER_ADDR entries need ETCD_ENDPOINTS (the node refuses to start)")
if len(set(k8s_prefixes.values())) > 1:
    fail(f"kubernetes: routers and nodes disagree on ETCD_PREFIX: {k8s_prefixes}")
workload_labels = [o["spec"]["template"]["metadata"]["labels"] for _, o in objects if o["kind"] in ("Deployment", "StatefulSet")]
for d in pdbs:
    if not any(selects(d["spec"]["selector"].get("matchLabels"), lb) for lb in workload_labels):
        fail(f"pdb {d['metadata']['name']}: selects no pods of docker/k8s")
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
