// SPDX-License-Identifier: GPL-2.0

//! The control socket of a running VM: how `vmsctl list`, `stop`,
//! `exec`, `stats` and `live-image create` reach the process that runs it.
//!
//! One Unix stream socket per VM, `<run dir>/vm/<name>.sock` (run dir:
//! `$VMS_RUN_DIR`, default `/run/vmsctl`). A client sends one JSON request on
//! a line and reads one JSON response line; the connection then closes.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Where sockets, logs and live-image state live.
pub fn run_dir() -> PathBuf {
    std::env::var_os("VMS_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/vmsctl"))
}

/// The directory of VM sockets and console logs.
pub fn vm_dir() -> PathBuf {
    run_dir().join("vm")
}

/// The control socket of VM `name`.
pub fn socket_path(name: &str) -> PathBuf {
    vm_dir().join(format!("{name}.sock"))
}

/// A request to a running VM.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Name, image, vCPUs, memory, state, uptime, start timing.
    Status,
    /// Power the VM off and end its process.
    Stop,
    /// Pause, save the machine state, make live image `image` of the
    /// memory, resume.
    Snapshot { image: String },
    /// Run `cmd` in the guest through its agent.
    Exec { cmd: String, timeout_ms: u64 },
    /// Put the VM back at its live image, then give the guest its
    /// identity again (waiting at most `timeout_ms` for the agent).
    Reset { timeout_ms: u64 },
    /// Store the pages the clone has used as its live image's working set.
    RecordWorkingSet,
}

/// The answer: `ok` with data, or an error message naming the cause.
#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

/// What serves requests.
pub type Handler = Arc<dyn Fn(Request) -> Result<serde_json::Value> + Send + Sync>;

/// A listening control socket; the socket file goes with it.
pub struct Server {
    path: PathBuf,
}

impl Server {
    /// Listen on VM `name`'s socket and serve each connection on its own
    /// thread with `handler`. Refuses if a live VM already has the name.
    pub fn start(name: &str, handler: Handler) -> Result<Server> {
        let path = socket_path(name);
        std::fs::create_dir_all(vm_dir())
            .with_context(|| format!("creating {}", vm_dir().display()))?;
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                bail!("a VM named {name:?} is already running (socket {})", path.display());
            }
            // A socket left by a VM that died: take the name over.
            let _ = std::fs::remove_file(&path);
        }
        let listener =
            UnixListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?;
        thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let handler = handler.clone();
                    let _ = thread::Builder::new()
                        .name("control-conn".into())
                        .spawn(move || serve(conn, &handler));
                }
            })
            .context("starting the control thread")?;
        Ok(Server { path })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(conn: UnixStream, handler: &Handler) {
    let mut line = String::new();
    let mut reader = BufReader::new(&conn);
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => match handler(req) {
            Ok(data) => Response { ok: true, error: None, data },
            Err(e) => Response { ok: false, error: Some(format!("{e:#}")), data: Default::default() },
        },
        Err(e) => Response {
            ok: false,
            error: Some(format!("bad request: {e}")),
            data: Default::default(),
        },
    };
    let mut w = &conn;
    if let Ok(mut bytes) = serde_json::to_vec(&resp) {
        bytes.push(b'\n');
        let _ = w.write_all(&bytes);
    }
}

/// Send `req` to VM `name` and wait (up to `timeout`) for the answer.
pub fn call(name: &str, req: &Request, timeout: Duration) -> Result<serde_json::Value> {
    call_path(&socket_path(name), name, req, timeout)
}

/// [`call`] on an explicit socket path.
pub fn call_path(
    path: &Path,
    name: &str,
    req: &Request,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let conn = UnixStream::connect(path).map_err(|e| {
        if path.exists() {
            anyhow!("VM {name:?} does not answer on {} ({e})", path.display())
        } else {
            anyhow!("no VM named {name:?} is running (no {})", path.display())
        }
    })?;
    conn.set_read_timeout(Some(timeout))?;
    let mut bytes = serde_json::to_vec(req)?;
    bytes.push(b'\n');
    (&conn).write_all(&bytes).with_context(|| format!("VM {name:?}: sending the request"))?;
    let mut line = String::new();
    BufReader::new(&conn)
        .read_line(&mut line)
        .with_context(|| format!("VM {name:?}: waiting for the answer"))?;
    if line.is_empty() {
        bail!("VM {name:?} closed the connection without answering (did it exit?)");
    }
    let resp: Response =
        serde_json::from_str(&line).with_context(|| format!("VM {name:?}: bad answer {line:?}"))?;
    if resp.ok {
        Ok(resp.data)
    } else {
        bail!("VM {name:?}: {}", resp.error.unwrap_or_default())
    }
}

/// The names of VMs with a socket in the run directory (some may be
/// stale: [`call`] tells).
pub fn list_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(vm_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".sock").map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}
