fn every_dth(q: i64, kv: i64, d: i32) -> bool {
    kv <= q && (q - kv) % (d as i64) == 0 && i32::MIN / d < 0
}
