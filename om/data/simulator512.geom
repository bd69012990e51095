; The 512x512 images of om_simulator.py's streaming-receiver, dectris-stream and files modes
; (their default --shape): one panel of 75 um pixels, the beam at its centre. Written for om;
; beam energy and distance come from the monitor. Other shapes need a geometry of their own:
; change max_fs/max_ss to columns-1/rows-1 and corner_x/corner_y to minus half of them.

photon_energy = 12400
clen = 0.100
res = 13333.3333
adu_per_photon = 1
data = /entry/data/data
dim0 = %
dim1 = ss
dim2 = fs

p0/min_fs = 0
p0/max_fs = 511
p0/min_ss = 0
p0/max_ss = 511
p0/corner_x = -256
p0/corner_y = -256
p0/fs = +1.0x
p0/ss = +1.0y
