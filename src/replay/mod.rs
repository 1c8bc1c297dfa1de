//! `panoptes replay`: an RTSP server that serves recorded files in a loop without re-encoding.
use std::net::SocketAddr;
use std::path::PathBuf;

/// Serves `files` on `listen` until interrupted.
pub fn run(_listen: SocketAddr, _files: Vec<PathBuf>, _copies: u32) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
