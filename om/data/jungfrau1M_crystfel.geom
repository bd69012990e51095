; JUNGFRAU 1M for CrystFEL's indexamajig reading om's live frames (--zmq-input,
; --data-format=msgpack): the (1024, 1024) float32 slab in photons under the payload key
; detector_data, beam energy (eV) and detector distance (mm) from the payload, peaks under
; peak_list (use --peaks=msgpack). Same panel layout as om's jungfrau1M.geom.

photon_energy = beam_energy eV
clen = detector_distance mm
res = 13333.3333
adu_per_photon = 1
peak_list = peak_list
data = detector_data

m0a0/min_fs = 0
m0a0/max_fs = 255
m0a0/min_ss = 0
m0a0/max_ss = 255
m0a0/corner_x = -515
m0a0/corner_y = -532
m0a0/fs = +1.0x
m0a0/ss = +1.0y

m0a1/min_fs = 256
m0a1/max_fs = 511
m0a1/min_ss = 0
m0a1/max_ss = 255
m0a1/corner_x = -257
m0a1/corner_y = -532
m0a1/fs = +1.0x
m0a1/ss = +1.0y

m0a2/min_fs = 512
m0a2/max_fs = 767
m0a2/min_ss = 0
m0a2/max_ss = 255
m0a2/corner_x = 1
m0a2/corner_y = -532
m0a2/fs = +1.0x
m0a2/ss = +1.0y

m0a3/min_fs = 768
m0a3/max_fs = 1023
m0a3/min_ss = 0
m0a3/max_ss = 255
m0a3/corner_x = 259
m0a3/corner_y = -532
m0a3/fs = +1.0x
m0a3/ss = +1.0y

m0a4/min_fs = 0
m0a4/max_fs = 255
m0a4/min_ss = 256
m0a4/max_ss = 511
m0a4/corner_x = -515
m0a4/corner_y = -274
m0a4/fs = +1.0x
m0a4/ss = +1.0y

m0a5/min_fs = 256
m0a5/max_fs = 511
m0a5/min_ss = 256
m0a5/max_ss = 511
m0a5/corner_x = -257
m0a5/corner_y = -274
m0a5/fs = +1.0x
m0a5/ss = +1.0y

m0a6/min_fs = 512
m0a6/max_fs = 767
m0a6/min_ss = 256
m0a6/max_ss = 511
m0a6/corner_x = 1
m0a6/corner_y = -274
m0a6/fs = +1.0x
m0a6/ss = +1.0y

m0a7/min_fs = 768
m0a7/max_fs = 1023
m0a7/min_ss = 256
m0a7/max_ss = 511
m0a7/corner_x = 259
m0a7/corner_y = -274
m0a7/fs = +1.0x
m0a7/ss = +1.0y

m1a0/min_fs = 0
m1a0/max_fs = 255
m1a0/min_ss = 512
m1a0/max_ss = 767
m1a0/corner_x = -515
m1a0/corner_y = 18
m1a0/fs = +1.0x
m1a0/ss = +1.0y

m1a1/min_fs = 256
m1a1/max_fs = 511
m1a1/min_ss = 512
m1a1/max_ss = 767
m1a1/corner_x = -257
m1a1/corner_y = 18
m1a1/fs = +1.0x
m1a1/ss = +1.0y

m1a2/min_fs = 512
m1a2/max_fs = 767
m1a2/min_ss = 512
m1a2/max_ss = 767
m1a2/corner_x = 1
m1a2/corner_y = 18
m1a2/fs = +1.0x
m1a2/ss = +1.0y

m1a3/min_fs = 768
m1a3/max_fs = 1023
m1a3/min_ss = 512
m1a3/max_ss = 767
m1a3/corner_x = 259
m1a3/corner_y = 18
m1a3/fs = +1.0x
m1a3/ss = +1.0y

m1a4/min_fs = 0
m1a4/max_fs = 255
m1a4/min_ss = 768
m1a4/max_ss = 1023
m1a4/corner_x = -515
m1a4/corner_y = 276
m1a4/fs = +1.0x
m1a4/ss = +1.0y

m1a5/min_fs = 256
m1a5/max_fs = 511
m1a5/min_ss = 768
m1a5/max_ss = 1023
m1a5/corner_x = -257
m1a5/corner_y = 276
m1a5/fs = +1.0x
m1a5/ss = +1.0y

m1a6/min_fs = 512
m1a6/max_fs = 767
m1a6/min_ss = 768
m1a6/max_ss = 1023
m1a6/corner_x = 1
m1a6/corner_y = 276
m1a6/fs = +1.0x
m1a6/ss = +1.0y

m1a7/min_fs = 768
m1a7/max_fs = 1023
m1a7/min_ss = 768
m1a7/max_ss = 1023
m1a7/corner_x = 259
m1a7/corner_y = 276
m1a7/fs = +1.0x
m1a7/ss = +1.0y
