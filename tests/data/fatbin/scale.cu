// Two trivial kernels in two translation units: the .so then holds two fat-binary containers.
__global__ void scale(float *x, float a) { x[threadIdx.x] *= a; }
