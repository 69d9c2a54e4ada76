//! `serialhub url [HOST[:PORT]] [SELECTOR] [--socket | --ign-set-control]`: exactly one
//! board's URL on stdout, for `ESPPORT=$(serialhub url …)`.

use lexopt::ValueExt;

use super::device::Selector;
use super::error::ClientError;
use super::target::devices_of;
use super::{help_requested, HELP};

pub(crate) fn main(mut parser: lexopt::Parser) -> Result<(), ClientError> {
    use lexopt::Arg::{Long, Value};
    let mut host = None;
    let mut sel = Selector::default();
    let mut ign = false;
    let mut socket = false;
    while let Some(arg) = parser.next()? {
        if let Some(field) = Selector::flag(&arg) {
            sel.set(field, &mut parser)?;
            continue;
        }
        match arg {
            Long("ign-set-control") => ign = true,
            Long("socket") => socket = true,
            Value(v) if host.is_none() => host = Some(v.string()?),
            a if help_requested(&a) => {
                print!("{HELP}");
                return Ok(());
            }
            a => return Err(a.unexpected().into()),
        }
    }
    let sel = sel.or_env()?;
    let (devices, from) = devices_of(host.as_deref())?;
    let d = sel.pick(&devices, &from)?;
    if socket {
        if d.socket_url.is_empty() {
            return Err(ClientError::Select(format!(
                "{} on {} serves RFC 2217 only (its protocol setting); use {}",
                d.name, from, d.url
            )));
        }
        println!("{}", d.socket_url);
        return Ok(());
    }
    println!("{}", if ign { &d.url_ign_set_control } else { &d.url });
    Ok(())
}
