//! A child process that dies with the thread that spawned it and is killed when dropped.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::Error;

/// Makes the child get SIGKILL when the thread that spawns it ends.
pub(crate) fn die_with_parent(command: &mut Command) {
    let parent = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then no signal would come.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// A supervised child: stdout and stderr go to a log file; SIGKILL on drop.
pub(crate) struct Supervised {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Supervised {
    pub(crate) fn spawn(
        name: &'static str,
        binary: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Self, Error> {
        let out = File::create(log).map_err(|source| Error::Io {
            what: format!("creating {}", log.display()),
            source,
        })?;
        let err = out.try_clone().map_err(|source| Error::Io {
            what: format!("duplicating {}", log.display()),
            source,
        })?;
        let mut command = Command::new(binary);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        die_with_parent(&mut command);
        let child = command.spawn().map_err(|source| Error::Io {
            what: format!("starting {}", binary.display()),
            source,
        })?;
        Ok(Self {
            name,
            child,
            log: log.to_path_buf(),
        })
    }

    /// Fails with the tail of the log when the process has already exited.
    pub(crate) fn check_running(&mut self) -> Result<(), Error> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.exited(status.to_string())),
            Err(err) => Err(self.exited(err.to_string())),
        }
    }

    fn exited(&self, status: String) -> Error {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        Error::ExitedEarly {
            process: self.name,
            status,
            log: self.log.clone(),
            tail,
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
