fn dilated_doc(q: i64, kv: i64, stride: i32, doc: &[i32]) -> bool {
    let d = q - kv;
    kv <= q && d % (stride as i64) == 0 && doc[q as usize] == doc[kv as usize]
}
