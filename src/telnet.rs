//! telnet
