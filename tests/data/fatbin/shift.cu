__global__ void shift(float *x, float b) { x[threadIdx.x] += b; }
