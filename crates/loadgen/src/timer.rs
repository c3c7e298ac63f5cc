//! Sleeps precise to microseconds on the async runtime: a Linux timerfd (CLOCK_MONOTONIC,
//! the clock of `Instant`) awaited through the runtime's event loop (tokio's timers tick
//! in milliseconds). Elsewhere: tokio's timers (millisecond ticks).

#[cfg(target_os = "linux")]
pub(crate) use linux::Timer;
#[cfg(not(target_os = "linux"))]
pub(crate) use other::Timer;

#[cfg(target_os = "linux")]
mod linux {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::{Duration, Instant};

    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    pub struct Timer(AsyncFd<OwnedFd>);

    impl Timer {
        pub fn new() -> std::io::Result<Timer> {
            // SAFETY: timerfd_create has no memory arguments; it returns a new descriptor or -1.
            let fd = unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: the OwnedFd stays open and refers to the timer as long as the AsyncFd
            // (which owns it) lives.
            let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
            Ok(Timer(fd))
        }

        /// Waits until `due`; false when it had already passed (no wait).
        pub async fn sleep_until(&self, due: Instant) -> std::io::Result<bool> {
            let now = Instant::now();
            if due <= now + Duration::from_micros(1) {
                return Ok(false);
            }
            let d = due - now;
            let spec = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: libc::timespec {
                    tv_sec: d.as_secs() as libc::time_t,
                    tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
                },
            };
            let fd = self.0.as_raw_fd();
            // SAFETY: a valid timerfd, a valid itimerspec and no old value wanted.
            if unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            loop {
                let mut guard = self.0.readable().await?;
                let mut expirations = [0u8; 8];
                // SAFETY: reads at most 8 bytes into an 8-byte buffer from our own descriptor.
                let r = unsafe { libc::read(fd, expirations.as_mut_ptr().cast(), 8) };
                guard.clear_ready();
                if r == 8 {
                    return Ok(true);
                }
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod other {
    use std::time::Instant;

    pub struct Timer;

    impl Timer {
        pub fn new() -> std::io::Result<Timer> {
            Ok(Timer)
        }

        /// Waits until `due`; false when it had already passed (no wait).
        pub async fn sleep_until(&self, due: Instant) -> std::io::Result<bool> {
            if due <= Instant::now() {
                return Ok(false);
            }
            tokio::time::sleep_until(due.into()).await;
            Ok(true)
        }
    }
}
