; The real JUNGFRAU module of ../shared/data (tests/data/README.md: module 5 of PSI's 4M)
; where the 4M geometry places it: the beam at fs 52.7, ss 473.8 of the module, its rows
; flipped (Jungfraujoch's module 5 stores them upside down); both modules of the 1M made of it
; at the same place.
clen = 0.075
photon_energy = 12400
res = 13333.3333
adu_per_photon = 1
data = /data/data
dim0 = %
dim1 = ss
dim2 = fs

m0/min_fs = 0
m0/max_fs = 1023
m0/min_ss = 0
m0/max_ss = 511
m0/corner_x = -52.72
m0/corner_y = 473.76
m0/fs = +1.0x
m0/ss = -1.0y

m1/min_fs = 0
m1/max_fs = 1023
m1/min_ss = 512
m1/max_ss = 1023
m1/corner_x = -52.72
m1/corner_y = 473.76
m1/fs = +1.0x
m1/ss = -1.0y
