//! Servers in containers, through testcontainers, for machines with a Docker engine.

use std::process::{Command, Stdio};

use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::SyncRunner;
use testcontainers::{ContainerRequest, GenericImage, ImageExt};

use crate::local::ContainerSpec;
use crate::process::{at_exit, Cleanup};
use crate::Endpoint;

/// Starts the container `spec` describes when a Docker engine answers, and waits for its
/// ready line. `None` when there is no engine: the caller starts a local process.
pub(crate) fn start(spec: &ContainerSpec) -> Option<Endpoint> {
    if !docker_engine_answers() {
        return None;
    }
    let ContainerSpec {
        image,
        port,
        command: cmd,
        ready_line: ready,
        scheme,
    } = *spec;
    let (name, tag) = image.rsplit_once(':').unwrap_or((image, "latest"));
    let generic = GenericImage::new(name, tag)
        .with_exposed_port(port.tcp())
        .with_wait_for(WaitFor::message_on_either_std(ready));
    let request: ContainerRequest<GenericImage> = if cmd.is_empty() {
        generic.into()
    } else {
        generic.with_cmd(cmd.iter().map(|s| s.to_string()))
    };
    let container = request
        .start()
        .unwrap_or_else(|e| panic!("cannot start the {image} container: {e}"));
    let host_port = container
        .get_host_port_ipv4(port.tcp())
        .unwrap_or_else(|e| panic!("the {image} container exposes no port {port}: {e}"));
    at_exit(Cleanup::RemoveContainer(container.id().to_owned()));
    // The exit hook removes it; dropping the handle here would stop it too early.
    std::mem::forget(container);
    let address = format!("127.0.0.1:{host_port}");
    Some(Endpoint {
        url: format!("{scheme}://{address}"),
        address,
    })
}

/// True when `docker info` reaches an engine (the client alone is not enough).
fn docker_engine_answers() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
