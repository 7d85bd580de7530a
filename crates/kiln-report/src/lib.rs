//! `kiln report RUN_DIR`: a self-contained report.html (being written).
