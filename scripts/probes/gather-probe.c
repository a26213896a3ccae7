// gather-probe.c: the machine's random row-gather rate with a minimal loop (no dlrs code): rows of R
// bytes at stride S from a T GiB THP table, uniform ids, prefetch P rows ahead, 1 or 2 threads.
// Build: gcc -O2 -mavx2 -pthread -o /tmp/gather-probe scripts/probes/gather-probe.c
// Run:   /tmp/gather-probe T_GIB STRIDE ROW_BYTES PREFETCH THREADS   (e.g. 4 128 128 128 2 vs 2 64 64 128 2)
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static char *tab; static size_t TB, S, R, P, N; static uint32_t *ids;
static double res[2];
static void *run(void *a){
  long k=(long)a; uint32_t *id=ids+k*N; size_t rows=TB/S; __m256 acc=_mm256_setzero_ps();
  double t0=now();
  for(int rep=0;rep<3;rep++)
  for(size_t i=0;i<N;i++){
    if(i+P<N){ char*p=tab+(size_t)id[i+P]*S; _mm_prefetch(p,_MM_HINT_T0); if(R>64)_mm_prefetch(p+64,_MM_HINT_T0);}
    char*p=tab+(size_t)id[i]*S;
    acc=_mm256_add_ps(acc,_mm256_loadu_ps((float*)p));
    if(R>32) acc=_mm256_add_ps(acc,_mm256_loadu_ps((float*)(p+32)));
    if(R>64){acc=_mm256_add_ps(acc,_mm256_loadu_ps((float*)(p+64)));acc=_mm256_add_ps(acc,_mm256_loadu_ps((float*)(p+96)));}
  }
  res[k]=3*N/(now()-t0); float f[8]; _mm256_storeu_ps(f,acc); if(f[0]==1.2345f)printf("x");
  return 0;
}
int main(int c,char**v){
  TB=(size_t)atof(v[1])<<30; S=atoi(v[2]); R=atoi(v[3]); P=atoi(v[4]); int th=atoi(v[5]); N=20000000;
  tab=mmap(0,TB,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); madvise(tab,TB,MADV_HUGEPAGE); memset(tab,1,TB);
  ids=malloc(2*N*4); uint64_t x=88172645463325252ull; size_t rows=TB/S;
  for(size_t i=0;i<2*N;i++){x^=x<<13;x^=x>>7;x^=x<<17;ids[i]=x%rows;}
  pthread_t t[2]; for(long k=0;k<th;k++)pthread_create(&t[k],0,run,(void*)k); for(int k=0;k<th;k++)pthread_join(t[k],0);
  printf("table %.1fG stride %zu row %zu pf %zu threads %d: %.0f Mrows/s\n",atof(v[1]),S,R,P,th,(res[0]+(th>1?res[1]:0))/1e6);
}
