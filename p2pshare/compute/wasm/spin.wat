;; spin.wat -- HOSTILE: loop forever.  Stopped by fuel (out_of_fuel) or, with fuel to
;; spare, by the epoch deadline (timeout).
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $forever (br $forever))))
