// vcpu-gaps.c: what the machine takes from a normal thread. One busy thread per core (pinned,
// nice 0) reads the clock in a loop; any gap over 0.5 ms is time the thread did not run
// (other threads, kernel work, or the hypervisor: compare the steal column of /proc/stat).
// Build: gcc -O2 -pthread -o /tmp/vcpu-gaps scripts/probes/vcpu-gaps.c
// Run:   /tmp/vcpu-gaps SECONDS      (idle here: gaps up to ~8 ms; during a reload of RMC1
//        into fresh memory: up to 37 ms on both cores; see docs/benchmarks.md)
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double secs; 
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void* run(void*a){ long cpu=(long)a; cpu_set_t s;CPU_ZERO(&s);CPU_SET(cpu,&s);pthread_setaffinity_np(pthread_self(),sizeof s,&s);
 long hist[8]={0}; double lims[8]={0.0005,0.001,0.002,0.005,0.01,0.02,0.05,1e9}; double maxg=0,tot=0;
 double t0=now(),prev=t0; while(prev-t0<secs){double t=now();double g=t-prev; if(g>0.0005){tot+=g; if(g>maxg)maxg=g; for(int i=0;i<8;i++) if(g<lims[i]){hist[i]++;break;}} prev=t;}
 printf("cpu%ld: gaps <1ms %ld, <2ms %ld, <5ms %ld, <10ms %ld, <20ms %ld, <50ms %ld, >=50ms %ld; max %.2f ms, total %.1f ms\n",cpu,hist[1],hist[2],hist[3],hist[4],hist[5],hist[6],hist[7],maxg*1e3,tot*1e3); return 0;}
int main(int c,char**v){secs=atof(v[1]);pthread_t t[2];for(long i=0;i<2;i++)pthread_create(&t[i],0,run,(void*)i);for(int i=0;i<2;i++)pthread_join(t[i],0);}
