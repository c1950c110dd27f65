//! What it costs on this machine to wake a process on another core: a one-byte ping-pong over a
//! loopback TCP connection, the two ends pinned by `benches/load/wakeup.sh`. A proxied request
//! crosses between cores four times where a direct one may not cross at all; this measures one
//! round trip of such crossings, with the receiving end asleep (as an idle server is) or polling.
//!
//! Usage: `wakeup echo ADDR [--poll]` answers each byte of one connection with the same byte
//! (`--poll`: reads without blocking, in a loop, instead of sleeping in `read`);
//! `wakeup ping ADDR ROUNDS` sends a byte and waits for it back, ROUNDS times, 200 µs apart so
//! that the other end has gone idle, and prints the round trip's median and 10th and 90th
//! percentiles in microseconds.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Long enough for an idle core to halt, short enough for many rounds a second.
const PAUSE: Duration = Duration::from_micros(200);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["echo", addr] => echo(addr, false),
        ["echo", addr, "--poll"] => echo(addr, true),
        ["ping", addr, rounds] => match rounds.parse() {
            Ok(rounds) if rounds > 0 => ping(addr, rounds),
            _ => Err(format!("ROUNDS: expected a count above 0, got {rounds:?}")),
        },
        _ => Err("usage: wakeup echo ADDR [--poll] | wakeup ping ADDR ROUNDS".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wakeup: {e}");
            ExitCode::FAILURE
        }
    }
}

fn echo(addr: &str, poll: bool) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("{addr}: {e}"))?;
    let (mut stream, _) = listener.accept().map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream.set_nonblocking(poll).map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Ok(()),
            Ok(_) => stream.write_all(&byte).map_err(|e| e.to_string())?,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn ping(addr: &str, rounds: usize) -> Result<(), String> {
    let mut stream = connect(addr)?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut byte = [b'x'; 1];
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        std::thread::sleep(PAUSE);
        let start = Instant::now();
        stream.write_all(&byte).map_err(|e| e.to_string())?;
        stream.read_exact(&mut byte).map_err(|e| e.to_string())?;
        times.push(start.elapsed());
    }
    times.sort();
    let at =
        |share: usize| times[(times.len() * share / 100).min(times.len() - 1)].as_secs_f64() * 1e6;
    println!("p50 {:.1} p10 {:.1} p90 {:.1}", at(50), at(10), at(90));
    Ok(())
}

/// The echo end may still be starting: try for up to 5 s.
fn connect(addr: &str) -> Result<TcpStream, String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect(addr) {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() > deadline => return Err(format!("{addr}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}
