//! The command line: parse, hand over to the library, report.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use mediagate::config::Config;
use mediagate::{demo, origin, process, proxy};

// mimalloc for every allocation of the process. A proxied request allocates and frees dozens
// of small blocks (heads, header maps, pingora's futures and tasks), for about a third of the
// instructions glibc's malloc takes (callgrind: benches/load/changes.md). A freed body buffer
// stays with the allocator for a second before its pages go back to the kernel, so the next
// chunk's buffer does not fault them in again. Built without transparent huge pages
// (`no_thp`): with them, a 2 MiB page backs each partly used region, and the proxy's RSS
// grew by about 30 MiB (README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mediagate",
    version,
    about = "A pingora sidecar in front of Twilio's Media API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Proxy {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Exit when standard input closes (how the demo and tests tie a server to themselves).
        #[arg(long)]
        exit_with_parent: bool,
        /// Take the listening sockets over from the running proxy (binary upgrade): waits on
        /// `server.upgrade_sock` until the running proxy is sent SIGQUIT.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a configuration and print it with every secret shown as ***; exit 0 or 1.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the local Media API with a durable store under --data.
    Origin {
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// With --auth-token: the only account HTTP Basic accepts. Without both, any request is let in.
        #[arg(long, value_name = "AC…", requires = "auth_token")]
        account_sid: Option<String>,
        #[arg(long, value_name = "T", requires = "account_sid")]
        auth_token: Option<String>,
        /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
        #[arg(long, value_name = "F", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, value_name = "F", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// How long the temporary content URLs it signs stay valid.
        #[arg(long, value_name = "SECS", default_value_t = mediagate::api::TEMPORARY_URL_TTL_SECS)]
        url_ttl: u64,
        /// Send this Cache-Control with every successful read (e.g. "no-store").
        #[arg(long, value_name = "VALUE")]
        cache_control: Option<String>,
        /// Exit when standard input closes.
        #[arg(long)]
        exit_with_parent: bool,
    },
    /// Origin and proxy on loopback with config/demo.yaml, ready for curl.
    Demo {
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9108")]
        metrics_listen: SocketAddr,
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8090")]
        origin_listen: SocketAddr,
        /// Where the demo keeps its store and files [default: <temp dir>/mediagate-demo]
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match Cli::parse().command {
        Command::Proxy {
            config,
            exit_with_parent,
            upgrade,
        } => {
            if exit_with_parent {
                process::exit_when_stdin_closes();
            }
            Config::load(&config)
                .map_err(|e| e.to_string())
                .and_then(|loaded| proxy::run(loaded, &config, upgrade))
        }
        Command::Check { config } => match Config::load(&config) {
            Ok(config) => {
                for warning in config.warnings() {
                    eprintln!("warning: {warning}");
                }
                print!("{}", config.to_redacted_yaml());
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        },
        Command::Origin {
            listen,
            data,
            account_sid,
            auth_token,
            tls_cert,
            tls_key,
            url_ttl,
            cache_control,
            exit_with_parent,
        } => {
            if exit_with_parent {
                process::exit_when_stdin_closes();
            }
            origin::run_blocking(origin::OriginOptions {
                listen,
                data,
                account_sid,
                auth_token,
                tls: tls_cert.zip(tls_key),
                url_ttl_secs: url_ttl,
                cache_control,
            })
        }
        Command::Demo {
            listen,
            metrics_listen,
            origin_listen,
            data,
        } => demo::run(demo::DemoOptions {
            listen,
            metrics_listen,
            origin_listen,
            data: data.unwrap_or_else(|| std::env::temp_dir().join("mediagate-demo")),
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mediagate: {e}");
            ExitCode::FAILURE
        }
    }
}
