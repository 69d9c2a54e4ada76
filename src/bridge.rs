//! The per-device thread (being written).
pub fn serve(_config: crate::config::Config) -> Result<(), String> {
    Err("serve not implemented yet".into())
}
