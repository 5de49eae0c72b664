//! The offline build: a Job that runs `recstack build` on `spec.build.data` and publishes a new
//! artifact version to `spec.artifacts.uri` (files first, `current` last, so pods only ever see
//! whole versions and swap them in), and, with `spec.build.schedule`, a CronJob that rebuilds.
//!
//! A Job's pod template cannot change, so the Job is named after a hash of its spec: a change
//! to the build, the artifacts location or the image makes a new Job (and the old one is
//! pruned); an unchanged stack keeps its finished Job, which is what stops it from running
//! again. The CronJob's own Jobs are labelled without `managed-by`, so the operator neither
//! caches nor prunes them (the CronJob's history limits do).

use recstack_crds::BuildSpec;
use serde_json::{Value, json};

use super::workloads::{add_store_credentials, container_security, image_checkov_skips, pod_security, priority_class};
use super::{Child, ChildKind, RenderError, StackCtx, child, config::fnv1a};
use crate::labels;

/// The build pod's scratch space: the ratings it fetches and the version it builds.
const WORK_DIR: &str = "/var/lib/recstack";

pub(super) fn build_jobs(ctx: &StackCtx, build: &BuildSpec) -> Result<Vec<Child>, RenderError> {
    let spec = job_spec(ctx, build)?;
    let hash = fnv1a(spec.to_string().as_bytes());
    // `<stack>-build-<5 hex>` fits the 63 characters a Job name may have (it becomes a label
    // value on its pods) for every stack name the CRD allows (51).
    let name = format!("{}-build-{:05x}", ctx.name, hash & 0xf_ffff);
    let mut meta = ctx.build_meta(&name);
    meta["annotations"] = image_checkov_skips();
    let mut out = vec![child(
        ChildKind::Job,
        json!({ "metadata": meta, "spec": spec.clone() }),
    )?];

    if let Some(schedule) = &build.schedule {
        let name = format!("{}-build", ctx.name);
        if name.len() > 52 {
            return Err(RenderError::InvalidField {
                field: "spec.build.schedule",
                message: format!(
                    "the CronJob name {name:?} is over Kubernetes' 52 characters: use a stack name of at most 46"
                ),
            });
        }
        // The Jobs the CronJob makes: no `managed-by` label, so they are not the operator's
        // to cache or prune.
        let mut job_labels = labels::build_labels(&ctx.name);
        job_labels.remove(labels::MANAGED_BY);
        let mut meta = ctx.build_meta(&name);
        meta["annotations"] = image_checkov_skips();
        out.push(child(
            ChildKind::CronJob,
            json!({
                "metadata": meta,
                "spec": {
                    "schedule": schedule,
                    // One build at a time; a late start within the hour still runs.
                    "concurrencyPolicy": "Forbid",
                    "startingDeadlineSeconds": 3600,
                    "successfulJobsHistoryLimit": 2,
                    "failedJobsHistoryLimit": 2,
                    "jobTemplate": {
                        "metadata": { "labels": job_labels },
                        "spec": spec,
                    },
                },
            }),
        )?);
    }
    Ok(out)
}

/// Default (requests, limits): the build holds the ratings and trains ALS in memory.
fn default_resources() -> Value {
    json!({ "requests": { "cpu": "1", "memory": "2Gi" }, "limits": { "cpu": "2", "memory": "4Gi" } })
}

fn job_spec(ctx: &StackCtx, build: &BuildSpec) -> Result<Value, RenderError> {
    let spec = ctx.spec();
    let mut args = vec![
        "build".to_string(),
        "--data".into(),
        build.data.clone(),
        "--out".into(),
        spec.artifacts.uri.clone(),
    ];
    if let Some(endpoint) = &spec.artifacts.endpoint {
        args.extend(["--endpoint".into(), endpoint.clone()]);
    }
    let resources = match &build.resources {
        Some(r) => serde_json::to_value(r).map_err(|source| RenderError::Build { kind: "Job", source })?,
        None => default_resources(),
    };
    let mut container = json!({
        "name": labels::BUILD,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["recstack"],
        "args": args,
        "env": [
            { "name": "RUST_LOG", "value": "info" },
            { "name": "RECSTACK_STACK", "value": ctx.name },
            // The fetched ratings and the staged version go to the work volume, not /tmp.
            { "name": "TMPDIR", "value": WORK_DIR },
        ],
        "resources": resources,
        "securityContext": container_security(),
        "volumeMounts": [
            { "name": "tmp", "mountPath": "/tmp" },
            { "name": "work", "mountPath": WORK_DIR },
        ],
    });
    let mut pod_spec = json!({
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "securityContext": pod_security(),
        // A failed pod stays for its logs; the Job retries with a new one.
        "restartPolicy": "Never",
        "volumes": [
            { "name": "tmp", "emptyDir": { "sizeLimit": "256Mi" } },
            { "name": "work", "emptyDir": { "sizeLimit": "8Gi" } },
        ],
    });
    add_store_credentials(spec, &mut container, &mut pod_spec);
    pod_spec["containers"] = json!([container]);
    if let Some(class) = priority_class(spec, true) {
        pod_spec["priorityClassName"] = json!(class);
    }
    Ok(json!({
        "backoffLimit": build.backoff_limit,
        "activeDeadlineSeconds": build.active_deadline_seconds,
        "template": {
            "metadata": { "labels": labels::build_labels(&ctx.name) },
            "spec": pod_spec,
        },
    }))
}
