# Injected by scripts/build_interfaces.sh (CMAKE_PROJECT_INCLUDE) into an interface package that is
# built unchanged against the PyPI ROS 2 wheels, such as composition_interfaces.
#
# Those wheels export the include directory of the machine that built them
# (/opt/python/cp311-cp311/include/python3.11) on their *__rosidl_generator_py targets, and CMake
# refuses to generate with a missing path. At the end of the top-level CMakeLists, after every
# find_package, drop the include directories that do not exist (sdcpc_interfaces as well as
# composition_interfaces). On a regular ROS 2 install every path exists and this changes nothing.
cmake_minimum_required(VERSION 3.21)  # IMPORTED_TARGETS

function(_drop_missing_include_dirs)
  get_directory_property(_imported_targets DIRECTORY "${CMAKE_SOURCE_DIR}" IMPORTED_TARGETS)
  foreach(_target IN LISTS _imported_targets)
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(_dirs)
      set(_existing "")
      foreach(_dir IN LISTS _dirs)
        if(EXISTS "${_dir}" OR _dir MATCHES "^\\$<")
          list(APPEND _existing "${_dir}")
        endif()
      endforeach()
      set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_existing}")
    endif()
  endforeach()
endfunction()

if(CMAKE_CURRENT_SOURCE_DIR STREQUAL CMAKE_SOURCE_DIR)
  cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _drop_missing_include_dirs)
endif()
