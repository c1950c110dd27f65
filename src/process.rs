//! Child-process hygiene: a server started by the demo or by a test ends when its parent does.

use std::io::Read;

/// Exits the process once standard input reaches end-of-file, which happens when the parent that
/// holds the other end of the pipe exits, however it exits. Started by `--exit-with-parent`.
pub fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut sink) {
                Ok(0) | Err(_) => std::process::exit(0),
                Ok(_) => continue,
            }
        }
    });
}
