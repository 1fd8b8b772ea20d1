// Renders each overlay with `kubectl kustomize`, validates every object
// against the Kubernetes API schemas (kubernetes-models), and checks DFC's
// own rules. Prints one line per check and "N passed, M failed"; exits 1 on
// any failure. Usage: node validate.mjs K8S_DIR
import { execFileSync } from "node:child_process";
import yaml from "js-yaml";

const dir = process.argv[2];
let passed = 0;
let failed = 0;
function check(ok, what) {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
}

async function modelFor(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : [null, apiVersion];
  const path = group ? `kubernetes-models/${group}/${version}/${kind}` : `kubernetes-models/${version}/${kind}`;
  return (await import(path))[kind];
}

function podSpec(o) {
  return o.spec?.template?.spec;
}

for (const overlay of ["cpu", "gpu"]) {
  const text = execFileSync("kubectl", ["kustomize", `${dir}/overlays/${overlay}`], { encoding: "utf8" });
  const objects = yaml.loadAll(text).filter(Boolean);
  check(objects.length > 0, `${overlay}: rendered ${objects.length} objects`);
  for (const o of objects) {
    const name = `${overlay}: ${o.kind}/${o.metadata?.name}`;
    try {
      const Model = await modelFor(o.apiVersion, o.kind);
      new Model(o).validate();
      check(true, `${name} matches the ${o.apiVersion} schema`);
    } catch (e) {
      check(false, `${name} schema: ${e.message}`);
    }
  }
  const workloads = objects.filter((o) => podSpec(o));
  const byName = (n) => workloads.find((o) => o.metadata.name === n);
  for (const w of workloads) {
    const spec = podSpec(w);
    const nonRoot = spec.securityContext?.runAsNonRoot === true && spec.securityContext?.runAsUser > 0;
    check(nonRoot, `${overlay}: ${w.metadata.name} runs as a non-root user`);
    for (const c of spec.containers) {
      const n = `${overlay}: ${w.metadata.name}/${c.name}`;
      check(Boolean(c.readinessProbe && c.livenessProbe), `${n} has readiness and liveness probes`);
      check(Boolean(c.resources?.requests && c.resources?.limits), `${n} has resource requests and limits`);
      check(c.securityContext?.allowPrivilegeEscalation === false, `${n} cannot escalate privileges`);
    }
  }
  const coordinator = byName("dfc-coordinator");
  const worker = byName("dfc-worker");
  check(Boolean(coordinator && worker), `${overlay}: coordinator and worker workloads exist`);
  if (!coordinator || !worker) continue;
  const cc = podSpec(coordinator).containers[0];
  const claims = (coordinator.spec.volumeClaimTemplates ?? []).map((t) => t.metadata.name);
  const mountOf = (c, flag) => {
    const path = c.args.find((a) => a.startsWith(`${flag}=`))?.split("=")[1] ?? "";
    return c.volumeMounts.find((m) => path === m.mountPath || path.startsWith(m.mountPath + "/"));
  };
  const stateMount = mountOf(cc, "--state");
  const backupMount = mountOf(cc, "--backup-dir");
  check(coordinator.kind === "StatefulSet" && coordinator.spec.replicas === 1 && claims.includes(stateMount?.name),
        `${overlay}: coordinator is a one-replica StatefulSet with a PVC for its state`);
  check(Boolean(backupMount && backupMount.name !== stateMount?.name && claims.includes(backupMount.name)),
        `${overlay}: the coordinator copies its state (--backup-dir) to a PVC of its own`);
  check(Boolean(cc.readinessProbe.grpc && cc.livenessProbe.grpc), `${overlay}: coordinator probes use gRPC health`);
  const gpuOf = (c) => c.resources?.limits?.["nvidia.com/gpu"];
  check(!gpuOf(cc), `${overlay}: the coordinator requests no GPU`);
  for (const c of podSpec(worker).containers) {
    if (overlay === "gpu") {
      check(Number(gpuOf(c)) > 0 && c.resources.requests?.["nvidia.com/gpu"] === gpuOf(c),
            `gpu: worker ${c.name} requests nvidia.com/gpu`);
      check(c.args.includes("--gpus=-1"), `gpu: worker ${c.name} runs one rank per GPU of its limit`);
      check(podSpec(worker).tolerations?.some((t) => t.key === "nvidia.com/gpu") &&
            Boolean(podSpec(worker).nodeSelector), "gpu: workers tolerate and select GPU nodes");
    } else {
      check(!gpuOf(c), `cpu: worker ${c.name} requests no GPU`);
    }
  }
  // The TLS and token Secrets are mounted where the flags point.
  const secrets = Object.fromEntries(objects.filter((o) => o.kind === "Secret").map((s) => [s.metadata.name, s]));
  const checkSecretFlags = (workload, container, flags) => {
    for (const flag of flags) {
      const arg = container.args.find((a) => a.startsWith(`${flag}=`));
      const path = arg?.split("=")[1] ?? "";
      const mount = container.volumeMounts.find((m) => path.startsWith(m.mountPath + "/"));
      const volume = mount && podSpec(workload).volumes.find((v) => v.name === mount.name);
      const secret = volume?.secret && secrets[volume.secret.secretName];
      const key = path.slice((mount?.mountPath.length ?? 0) + 1);
      check(Boolean(secret && (secret.stringData?.[key] !== undefined || secret.data?.[key] !== undefined)),
            `${overlay}: ${workload.metadata.name} ${flag} ${path} is key '${key}' of a mounted Secret`);
    }
  };
  checkSecretFlags(coordinator, cc, ["--tls-cert", "--tls-key", "--tls-ca", "--token-file", "--worker-token-file"]);
  // The evaluation tier: replicas behind a headless Service, a GPU each on GPU nodes, autoscaled on CPU nodes.
  const server = byName("dfc-server");
  check(Boolean(server && server.kind === "Deployment"), `${overlay}: dfc-server is a Deployment`);
  if (server) {
    const sc = podSpec(server).containers[0];
    checkSecretFlags(server, sc, ["--tls-cert", "--tls-key", "--token-file", "--coordinator-tls-ca",
                                  "--worker-token-file"]);
    check(Boolean(sc.readinessProbe.grpc), `${overlay}: dfc-server readiness uses gRPC health (NOT_SERVING without the catalogue)`);
    check(sc.args.includes("--coordinator=dfc-coordinator:50051"), `${overlay}: dfc-server asks the coordinator's catalogue`);
    // Its image decoders follow the pod's CPU limit, not the node's cores (the default).
    const decoders = Number(sc.args.find((a) => a.startsWith("--decode-processes="))?.split("=")[1]);
    check(decoders >= 1 && decoders <= Number(sc.resources?.limits?.cpu),
          `${overlay}: dfc-server --decode-processes (${decoders}) is at most its CPU limit`);
    const headless = objects.find((o) => o.kind === "Service" && o.metadata.name === "dfc-server");
    check(Boolean(headless && headless.spec.clusterIP === "None" && headless.spec.ports.some((p) => p.port === 50061)),
          `${overlay}: a headless Service resolves every dfc-server replica`);
    const hpa = objects.find((o) => o.kind === "HorizontalPodAutoscaler" && o.spec.scaleTargetRef.name === "dfc-server");
    if (overlay === "gpu") {
      check(gpuOf(sc) === "1" && sc.resources.requests?.["nvidia.com/gpu"] === "1" && sc.args.includes("--device=cuda:0"),
            "gpu: each dfc-server replica has one GPU and runs inference on it");
      check(podSpec(server).tolerations?.some((t) => t.key === "nvidia.com/gpu"), "gpu: dfc-server tolerates GPU nodes");
    } else {
      check(!gpuOf(sc) && Boolean(sc.resources.requests?.cpu), "cpu: dfc-server requests CPU, no GPU");
      check(Boolean(hpa && hpa.spec.metrics.some((m) => m.resource?.name === "cpu")),
            "cpu: a HorizontalPodAutoscaler scales dfc-server on CPU");
    }
  }
  // Every DFC pod serves Prometheus metrics, says so in the scrape annotations,
  // and the NetworkPolicy lets the monitoring namespace reach that port.
  for (const w of [coordinator, worker, server].filter(Boolean)) {
    const c = podSpec(w).containers[0];
    const listen = c.args.find((a) => a.startsWith("--metrics-listen="));
    const port = listen ? Number(listen.split(":").pop()) : 0;
    const a = w.spec.template.metadata.annotations ?? {};
    check(port > 0 && c.ports?.some((p) => p.name === "metrics" && p.containerPort === port),
          `${overlay}: ${w.metadata.name} serves /metrics on a named container port`);
    check(a["prometheus.io/scrape"] === "true" && Number(a["prometheus.io/port"]) === port,
          `${overlay}: ${w.metadata.name} is annotated for scraping on that port`);
    const policy = objects.find((o) => o.kind === "NetworkPolicy" &&
                                       o.spec.podSelector.matchLabels["app.kubernetes.io/name"] === w.metadata.name);
    check(Boolean(policy?.spec.ingress.some((r) => r.ports?.some((p) => p.port === port) &&
                                                   r.from.some((f) => f.namespaceSelector?.matchLabels?.["dfc/monitoring"] === "true"))),
          `${overlay}: ${w.metadata.name}'s NetworkPolicy admits the monitoring namespace to ${port}`);
    const https = a["prometheus.io/scheme"] === "https";
    const hasCert = c.args.some((x) => x.startsWith("--metrics-tls-cert=") || x.startsWith("--tls-cert="));
    check(https && hasCert, `${overlay}: ${w.metadata.name} metrics are HTTPS with a mounted certificate`);
  }
  check(cc.args.includes("--http-listen=0.0.0.0:8080") && cc.args.some((a) => a.startsWith("--token-file=")),
        `${overlay}: the coordinator serves its dashboard behind the users' token`);
  const svc = objects.find((o) => o.kind === "Service" && o.metadata.name === "dfc-coordinator");
  check(Boolean(svc && svc.spec.ports.some((p) => p.port === 50051)), `${overlay}: a Service exposes the coordinator's gRPC port`);
  check(objects.some((o) => o.kind === "PodDisruptionBudget") && objects.some((o) => o.kind === "NetworkPolicy"),
        `${overlay}: PodDisruptionBudget and NetworkPolicy present`);
  check(objects.some((o) => o.kind === "PersistentVolumeClaim" && o.spec.accessModes.includes("ReadWriteMany")),
        `${overlay}: a ReadWriteMany volume for shards and checkpoints`);
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
