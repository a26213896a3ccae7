// touch-probe.c: touches every page of a new anonymous allocation, as loading a model into
// fresh memory does, to see what that costs the other threads (run scripts/probes/vcpu-gaps.c
// beside it). On a VM with free page reporting the first touch of each page traps to the host.
// Build: gcc -O2 -pthread -o /tmp/touch-probe scripts/probes/touch-probe.c
// Run:   /tmp/touch-probe GB CHUNK_MB SLEEP_MS THREADS [HUGE=1]
//        (4 64 0 2 1: 4 GB at full speed on 2 SCHED_IDLE threads; 4 8 10 1 1: paced)
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
static char* p; static size_t total, chunk; static int nt, sleep_ms, huge;
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void* run(void*a){ long id=(long)a; struct sched_param sp={0}; sched_setscheduler(0,SCHED_IDLE,&sp);
  for(size_t off=id*chunk; off<total; off+=nt*chunk){ size_t end=off+chunk<total?off+chunk:total; for(size_t i=off;i<end;i+=4096) p[i]=1; if(sleep_ms) usleep(sleep_ms*1000);} return 0;}
int main(int c,char**v){ total=(size_t)atof(v[1])*(1UL<<30); chunk=(size_t)atoi(v[2])<<20; sleep_ms=atoi(v[3]); nt=atoi(v[4]); huge=c>5?atoi(v[5]):1;
  p=mmap(0,total,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); if(huge) madvise(p,total,MADV_HUGEPAGE); else madvise(p,total,MADV_NOHUGEPAGE);
  double t0=now(); pthread_t t[8]; for(long i=0;i<nt;i++)pthread_create(&t[i],0,run,(void*)i); for(int i=0;i<nt;i++)pthread_join(t[i],0);
  printf("touched %.1f GB in %.2f s\n", total/1e9, now()-t0); munmap(p,total); }
