//! Wire compatibility with a plain Python grpcio client generated from
//! proto/message_service.proto: tests/python/grpc_client_compat.py calls every method of
//! a real `labmq-server`. Needs `pip install grpcio grpcio-tools`; without them this test
//! fails (it never skips).

mod support;

use std::path::Path;

use support::{COMMAND_TIMEOUT, isolated_command, output_within, spawn_server};

const PIP_HINT: &str = "pip install grpcio grpcio-tools";

fn python_env() -> Vec<(&'static str, String)> {
    // The isolated environment keeps PATH (so pyenv shims work) and HOME; pass the
    // interpreter's own settings through too, so a virtualenv or user site is found.
    ["PYTHONPATH", "VIRTUAL_ENV", "PYENV_ROOT", "PYENV_VERSION"]
        .into_iter()
        .filter_map(|key| std::env::var(key).ok().map(|value| (key, value)))
        .collect()
}

fn python(args: &[&str]) -> std::process::Output {
    let mut command = isolated_command("python3", &python_env());
    command.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    output_within(command, COMMAND_TIMEOUT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn grpcio_client_calls_every_method() {
    if let Err(e) = std::process::Command::new("python3")
        .arg("--version")
        .output()
    {
        panic!("cannot run python3 ({e}); install Python 3, then `{PIP_HINT}`");
    }
    let probe = python(&["-c", "import grpc, grpc_tools.protoc"]);
    assert!(
        probe.status.success(),
        "the Python gRPC packages are missing; install them with `{PIP_HINT}`\n{}",
        text(&probe.stderr)
    );

    let stubs = tempfile::tempdir().expect("tempdir for Python stubs");
    let stubs_dir = stubs.path().to_str().expect("utf-8 temp path");
    let out = format!("--python_out={stubs_dir}");
    let grpc_out = format!("--grpc_python_out={stubs_dir}");
    let protoc = python(&[
        "-m",
        "grpc_tools.protoc",
        "-Iproto",
        &out,
        &grpc_out,
        "proto/message_service.proto",
    ]);
    assert!(
        protoc.status.success(),
        "python3 -m grpc_tools.protoc failed\n{}{}",
        text(&protoc.stdout),
        text(&protoc.stderr)
    );
    assert!(
        Path::new(stubs_dir)
            .join("message_service_pb2_grpc.py")
            .exists()
    );

    let server = spawn_server("");
    let addr = server.addr.to_string();
    let run = python(&[
        "tests/python/grpc_client_compat.py",
        &addr,
        "--stubs-dir",
        stubs_dir,
    ]);
    let stdout = text(&run.stdout);
    let stderr = text(&run.stderr);
    assert!(
        run.status.success(),
        "grpc_client_compat.py failed ({}):\n{stdout}{stderr}\n--- server stderr ---\n{}",
        run.status,
        server.daemon.stderr()
    );
    assert!(stdout.contains("checks OK"), "{stdout}{stderr}");
}

/// grpcio-reflection's client speaks `grpc.reflection.v1alpha` only: it lists, describes
/// and (through the reflected types) calls labmq-server.
#[test]
fn grpcio_reflection_v1alpha_client_describes_and_calls() {
    const REFLECTION_HINT: &str = "pip install grpcio grpcio-reflection";
    let probe = python(&["-c", "import grpc, grpc_reflection.v1alpha.reflection_pb2"]);
    assert!(
        probe.status.success(),
        "the Python reflection package is missing; install it with `{REFLECTION_HINT}`\n{}",
        text(&probe.stderr)
    );
    let server = spawn_server("");
    let addr = server.addr.to_string();
    let run = python(&["tests/python/reflection_compat.py", &addr]);
    let stdout = text(&run.stdout);
    let stderr = text(&run.stderr);
    assert!(
        run.status.success(),
        "reflection_compat.py failed ({}):\n{stdout}{stderr}\n--- server stderr ---\n{}",
        run.status,
        server.daemon.stderr()
    );
    assert!(stdout.contains("reflection checks OK"), "{stdout}{stderr}");
}
