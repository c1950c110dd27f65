//! `mediagate demo`: the local origin and the proxy on loopback, one media already uploaded,
//! and three curl commands that work as printed. Ctrl-C stops all of it.

use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::RngCore;

use crate::api::Media;
use crate::process::{self, http_request};

pub struct DemoOptions {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub origin_listen: SocketAddr,
    pub data: PathBuf,
}

/// The account and service of config/demo.yaml.
const DEMO_ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const DEMO_SERVICE: &str = "IS0123456789abcdef0123456789abcdef";
const DEMO_CONFIG: &str = include_str!("../config/demo.yaml");
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// A 1×1 PNG, the demo's sample upload.
const SAMPLE_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0x9f, 0xc6, 0xf0,
    0x1f, 0x00, 0x06, 0x32, 0x02, 0x65, 0x33, 0x09, 0xc2, 0x65, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// The demo's two servers; dropping it stops both.
struct Servers {
    children: Vec<Child>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SIGINT: pingora's fast shutdown (SIGTERM would wait out the grace period).
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

pub fn run(options: DemoOptions) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let files = DemoFiles::write(&options.data).map_err(|e| format!("demo files: {e}"))?;
    let token = random_token();
    let mut servers = Servers {
        children: Vec::new(),
    };

    let (origin, origin_stdout) = spawn_origin(&options, &files, &token)?;
    servers.children.push(origin);
    wait_for_origin(origin_stdout)?;
    servers
        .children
        .push(spawn_proxy(&options, &files, &token)?);
    wait_until_ready(options.metrics_listen, &mut servers)?;

    let media = upload_sample(options.listen, &files.sample)?;
    print_instructions(&options, &files, &media);

    runtime.block_on(wait_for_stop_signal(&mut servers));
    say("\nstopping the demo");
    Ok(())
}

struct DemoFiles {
    config: PathBuf,
    sample: PathBuf,
    store: PathBuf,
}

impl DemoFiles {
    fn write(root: &Path) -> io::Result<DemoFiles> {
        std::fs::create_dir_all(root)?;
        let files = DemoFiles {
            config: root.join("demo.yaml"),
            sample: root.join("sample.png"),
            store: root.join("store"),
        };
        std::fs::write(&files.config, DEMO_CONFIG)?;
        std::fs::write(&files.sample, SAMPLE_PNG)?;
        Ok(files)
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn this_program() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find the mediagate binary: {e}"))
}

fn quiet_logs(command: &mut Command) {
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "warn");
    }
}

fn spawn_origin(
    options: &DemoOptions,
    files: &DemoFiles,
    token: &str,
) -> Result<(Child, ChildStdout), String> {
    let mut command = Command::new(this_program()?);
    command
        .arg("origin")
        .arg("--listen")
        .arg(options.origin_listen.to_string())
        .arg("--data")
        .arg(&files.store)
        .args([
            "--account-sid",
            DEMO_ACCOUNT,
            "--auth-token",
            token,
            "--exit-with-parent",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    quiet_logs(&mut command);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start the origin: {e}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or("the origin's output is not readable")?;
    Ok((child, stdout))
}

/// The origin prints one line once it accepts connections; it exits with an error otherwise.
fn wait_for_origin(stdout: ChildStdout) -> Result<(), String> {
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| format!("origin: {e}"))?;
    if line.contains("listening on") {
        Ok(())
    } else {
        Err("the origin did not start (see its error above)".into())
    }
}

fn spawn_proxy(options: &DemoOptions, files: &DemoFiles, token: &str) -> Result<Child, String> {
    let mut command = Command::new(this_program()?);
    command
        .arg("proxy")
        .arg("--config")
        .arg(&files.config)
        .arg("--exit-with-parent")
        .env("MEDIAGATE_DEMO_LISTEN", options.listen.to_string())
        .env(
            "MEDIAGATE_DEMO_METRICS_LISTEN",
            options.metrics_listen.to_string(),
        )
        .env(
            "MEDIAGATE_DEMO_UPSTREAM",
            format!("http://{}", options.origin_listen),
        )
        .env("MEDIAGATE_DEMO_AUTH_TOKEN", token)
        .stdin(Stdio::piped());
    quiet_logs(&mut command);
    command
        .spawn()
        .map_err(|e| format!("cannot start the proxy: {e}"))
}

/// Waits for the proxy's `/readyz`, failing early if a server exits.
fn wait_until_ready(metrics: SocketAddr, servers: &mut Servers) -> Result<(), String> {
    process::wait_ready(metrics, READY_DEADLINE, || {
        for child in &mut servers.children {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "a demo server exited early ({status}); see its error above"
                ));
            }
        }
        Ok(())
    })
}

fn upload_sample(proxy: SocketAddr, sample: &Path) -> Result<Media, String> {
    let body = std::fs::read(sample).map_err(|e| format!("{}: {e}", sample.display()))?;
    let path = format!("/v1/Services/{DEMO_SERVICE}/Media");
    let (status, answer) = http_request(
        proxy,
        "POST",
        &path,
        &[("Content-Type", "image/png")],
        &body,
    )
    .map_err(|e| format!("sample upload: {e}"))?;
    if status != 201 {
        return Err(format!(
            "sample upload answered {status}: {}",
            String::from_utf8_lossy(&answer)
        ));
    }
    serde_json::from_slice(&answer).map_err(|e| format!("sample upload answer: {e}"))
}

fn print_instructions(options: &DemoOptions, files: &DemoFiles, media: &Media) {
    let proxy = format!("http://{}", options.listen);
    let media_path = format!("/v1/Services/{DEMO_SERVICE}/Media/{}", media.sid);
    let sample = shell_word(&format!("@{}", files.sample.display()));
    say(&format!(
        "mediagate demo is running
  proxy:   {proxy}  (metrics: http://{metrics}/metrics)
  origin:  http://{origin}  (store: {store})
  sample media {sid} is uploaded already.

Try (the proxy adds the credentials):
  curl -sS -X POST -H 'Content-Type: image/png' --data-binary {sample} {proxy}/v1/Services/{DEMO_SERVICE}/Media
  curl -sS {proxy}{media_path}
  curl -sS -o copy.png {proxy}{media_path}/Content

Press Ctrl-C to stop.",
        metrics = options.metrics_listen,
        origin = options.origin_listen,
        store = files.store.display(),
        sid = media.sid,
    ));
}

/// `word` as the shell reads it back: as it is when it holds only characters a shell leaves
/// alone, else in single quotes (a `--data` directory with a space in it).
fn shell_word(word: &str) -> String {
    let plain = word
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"@%+,-./:=_".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Prints a line; a closed standard output (the reader went away) is not the demo's failure.
fn say(text: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

async fn wait_for_stop_signal(servers: &mut Servers) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = interrupt.recv() => return,
            _ = terminate.recv() => return,
            _ = tick.tick() => {
                // A server that died takes the demo down with it rather than leaving half of it.
                if servers.children.iter_mut().any(|c| matches!(c.try_wait(), Ok(Some(_)))) {
                    eprintln!("a demo server exited");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shell_word;

    #[test]
    fn printed_paths_survive_the_shell() {
        assert_eq!(
            shell_word("@/tmp/mediagate-demo/sample.png"),
            "@/tmp/mediagate-demo/sample.png"
        );
        assert_eq!(
            shell_word("@/tmp/my demo/sample.png"),
            "'@/tmp/my demo/sample.png'"
        );
        assert_eq!(shell_word("@/tmp/it's/a.png"), r"'@/tmp/it'\''s/a.png'");
    }
}
